"""The inner loop: a few SGD steps on one task's support set.

Pure functions over dicts of tensors ("layer/weight" -> tensor). The number
of steps is a static Python int, so the loop unrolls at trace time and every
per-step slot (BN slot, LSLR rate, MSL weight) is a static index.

`adapt_steps` is the one inner loop of the code base: meta-training and
evaluation (`run_inner_loop`) and adaptation alone (`adapt`, which
`MetaLearner.adapt` and the exported `adapt_and_predict` run) all take
their SGD steps through it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

# forward(x, step, params, training) -> (logits, BN moments per stage).
Forward = Callable[..., tuple]
# rate(param_name, step) -> scalar tensor (LSLR) or Python float (fixed).
Rate = Callable[[str, int], object]


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy: scalar. logits [n, ways], labels int [n]."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=logits
        )
    )


def accuracy(logits, labels):
    """Fraction of argmax hits: scalar in the logits' dtype."""
    hits = tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype),
                    labels)
    return tf.reduce_mean(tf.cast(hits, logits.dtype))


def inner_update(params: dict, grads: dict, rate: Rate, step: int) -> dict:
    """theta' = theta - alpha[name][step] * grad for each tensor in `grads`.

    Tensors absent from `grads` (not adapted) pass through unchanged.
    Returns a new dict.
    """
    updated = dict(params)
    for name, grad in grads.items():
        updated[name] = params[name] - rate(name, step) * grad
    return updated


def adapt_steps(
    forward: Forward,
    rate: Rate,
    params: dict,
    support_x,
    support_y,
    *,
    num_steps: int,
    adapted_names: list[str],
    second_order: bool,
    training: bool,
    outer_tape: tf.GradientTape | None = None,
):
    """Yields (step, fast weights, support BN moments) after each step.

    Antoniou et al. (2019), Sec. 4: step k runs the support set through BN
    slot k and updates the adapted tensors with the LSLR rate of step k.

    Args:
      forward, rate, params, num_steps, adapted_names, second_order,
        training, outer_tape: as in `run_inner_loop`.
      support_x: [n_s, H, W, C]; support_y: int32 [n_s].

    Yields:
      (step, every network tensor after the update of `step`, the BN
      moments of its support pass).
    """
    fast = dict(params)
    for step in range(num_steps):
        grads, moments = _support_gradients(
            forward, fast, support_x, support_y, step, adapted_names,
            training, record=second_order or outer_tape is None,
            outer_tape=outer_tape,
        )
        if not second_order:
            grads = {n: tf.stop_gradient(g) for n, g in grads.items()}
        fast = inner_update(fast, grads, rate, step)
        yield step, fast, moments


def adapt(
    forward: Forward,
    rate: Rate,
    params: dict,
    support_x,
    support_y,
    *,
    num_steps: int,
    adapted_names: list[str],
) -> dict:
    """The evaluation protocol's adaptation to one support set.

    First order, `training=False`: exactly the support steps that
    `run_inner_loop` takes at evaluation.

    Returns:
      The adapted tensors after the last step (`adapted_names` only).
    """
    fast = params
    for _, fast, _ in adapt_steps(
        forward, rate, params, support_x, support_y, num_steps=num_steps,
        adapted_names=adapted_names, second_order=False, training=False,
    ):
        pass
    return {n: fast[n] for n in adapted_names}


def recomputed_query(forward: Forward) -> Forward:
    """`forward` for query passes, keeping no activations for the outer
    backward pass: a custom gradient runs the pass again when the
    meta-gradient reaches it (what `tf.recompute_grad` does; written out
    because that fails inside the per-task graph loop).

    The outer tape then holds each query pass's inputs and fast weights
    only, not its activations, which with MSL (a differentiable query pass
    after every inner step) hold most of a meta-step's peak memory on
    large images. The price is one more forward pass per query loss in
    the backward pass. Only the query passes are recomputed: the support
    passes are differentiated twice (second order), which this first-order
    custom gradient does not support. Returns no BN moments (the query
    passes' moments are never used).
    """

    def query_forward(x, step, params, training):
        names = list(params)

        def logits_of(images, values):
            logits, _ = forward(images, step, dict(zip(names, values)),
                                training)
            return logits

        @tf.custom_gradient
        def recomputed(images, *values):
            # Copies in this graph: inside an MSL step's tf.cond the inputs
            # are tensors of the outer graph, which the gradient of the
            # cond cannot capture.
            images = tf.identity(images)
            values = [tf.identity(v) for v in values]

            def grad(upstream, variables=None):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(values)
                    logits = logits_of(images, values)
                grads = tape.gradient(
                    logits, list(values), output_gradients=upstream,
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
                return ([tf.zeros_like(images), *grads],
                        [tf.zeros_like(v) for v in variables or []])

            return logits_of(images, values), grad

        return recomputed(x, *[params[n] for n in names]), None

    return query_forward


@dataclasses.dataclass(frozen=True)
class InnerLoopResult:
    """What one task's inner loop produced.

    Attributes:
      loss: the task's query loss, weighted over steps (scalar).
      step_losses: [num_steps] query loss after each step (0 where skipped).
      step_accuracies: [num_steps] query accuracy after each step.
      logits: [num_queries_total, ways] query logits after the last step.
      support_moments: per step, the BN (mean, variance) of each stage from
        the support pass, or None where running statistics were used.
      fast_weights: the adapted parameters after the last step.
    """

    loss: tf.Tensor
    step_losses: tf.Tensor
    step_accuracies: tf.Tensor
    logits: tf.Tensor
    support_moments: list
    fast_weights: dict


def run_inner_loop(
    forward: Forward,
    rate: Rate,
    params: dict,
    task: dict,
    *,
    num_steps: int,
    adapted_names: list[str],
    second_order: bool,
    training: bool,
    loss_weights=None,
    outer_tape: tf.GradientTape | None = None,
    every_step_accuracy: bool = True,
    query_forward: Forward | None = None,
) -> InnerLoopResult:
    """Adapts `params` to one task and measures the query set after each step.

    Antoniou et al. (2019), Sec. 4: step k runs the support set through BN
    slot k, updates the adapted tensors with the LSLR rate of step k, then
    (for MSL) runs the query set through slot k with the updated weights.

    Args:
      forward: the network, see `Forward`.
      rate: the inner learning rate, see `Rate`.
      params: every network tensor ("layer/weight" -> tensor).
      task: "support_x" [n_s, H, W, C], "support_y" int32 [n_s],
        "query_x" [n_q, H, W, C], "query_y" int32 [n_q].
      num_steps: static number of inner steps.
      adapted_names: the tensors the inner loop updates.
      second_order: keep the inner gradients differentiable; False stops
        them (first-order MAML).
      training: meta-training pass (batch statistics in every BN mode).
      loss_weights: None to use the final step's query loss alone, or a
        float tensor [num_steps] of MSL weights; a step whose weight is 0
        skips its query loss (its accuracy is still measured).
      outer_tape: the tape computing the meta-gradient, if any. In first
        order the support passes need not be recorded on it.
      every_step_accuracy: run the query set after every step to measure
        its accuracy. False runs it only where its loss counts (the final
        step, and MSL steps with a non-zero weight), as the authors' code
        does, and reports NaN for the other steps: with MSL off that skips
        num_steps - 1 query forward passes (on mini-ImageNet, 75 images
        each, about 40% of a training step's arithmetic).
      query_forward: the network for the query passes whose loss counts
        (e.g. `recomputed_query(forward)`); None: `forward`.
    """
    loss_forward = forward if query_forward is None else query_forward
    step_losses, step_accuracies, support_moments = [], [], []
    zero = tf.zeros([], params[adapted_names[0]].dtype)
    # Unless every step is scored: the (loss, accuracy) of a step whose
    # query set is not run.
    skip = (None if every_step_accuracy
            else (zero, tf.constant(float("nan"), zero.dtype)))
    logits = None
    for step, fast, moments in adapt_steps(
        forward, rate, params, task["support_x"], task["support_y"],
        num_steps=num_steps, adapted_names=adapted_names,
        second_order=second_order, training=training, outer_tape=outer_tape,
    ):
        support_moments.append(moments)
        last = step == num_steps - 1
        if last:
            logits, _ = loss_forward(task["query_x"], step, fast, training)
            loss = cross_entropy(logits, task["query_y"])
            acc = accuracy(logits, task["query_y"])
        elif loss_weights is None:
            loss, acc = skip if skip is not None else (zero, _query_accuracy(
                forward, fast, task, step, training, outer_tape))
        else:
            loss, acc = _weighted_query(forward, loss_forward, fast, task,
                                        step, training, loss_weights[step],
                                        skip)
        step_losses.append(loss)
        step_accuracies.append(acc)
    step_losses = tf.stack(step_losses)
    if loss_weights is None:
        total = step_losses[-1]
    else:
        total = tf.reduce_sum(tf.cast(loss_weights, zero.dtype) * step_losses)
    return InnerLoopResult(
        loss=total,
        step_losses=step_losses,
        step_accuracies=tf.stack(step_accuracies),
        logits=logits,
        support_moments=support_moments,
        fast_weights={n: fast[n] for n in adapted_names},
    )


def _support_gradients(forward, fast, support_x, support_y, step,
                       adapted_names, training, *, record, outer_tape):
    """Support loss gradients w.r.t. the adapted tensors at `step`."""

    def compute():
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([fast[n] for n in adapted_names])
            logits, moments = forward(support_x, step, fast, training)
            loss = cross_entropy(logits, support_y)
        grads = tape.gradient(loss, [fast[n] for n in adapted_names])
        return dict(zip(adapted_names, grads, strict=True)), moments

    if record:
        return compute()
    # First order: nothing of the support pass reaches the meta-gradient,
    # so keep it off the outer tape (less memory, no wasted backward).
    with outer_tape.stop_recording():
        return compute()


def _query_accuracy(forward, fast, task, step, training, outer_tape):
    """Query accuracy at `step` without putting anything on the outer tape."""
    if outer_tape is None:
        logits, _ = forward(task["query_x"], step, fast, training)
        return accuracy(logits, task["query_y"])
    with outer_tape.stop_recording():
        logits, _ = forward(task["query_x"], step, fast, training)
        return accuracy(logits, task["query_y"])


def _weighted_query(forward, loss_forward, fast, task, step, training,
                    weight, skip):
    """(loss, accuracy) of the query set at a non-final MSL step.

    A zero weight (MSL annealed out) skips the differentiable pass at run
    time, in the same graph: changing the weights never retraces. With
    `skip`, a (loss, accuracy) pair, a zero weight returns it instead of
    running the query set for its accuracy.
    """

    def with_loss():
        logits, _ = loss_forward(task["query_x"], step, fast, training)
        return (cross_entropy(logits, task["query_y"]),
                accuracy(logits, task["query_y"]))

    def accuracy_only():
        frozen = {n: tf.stop_gradient(t) for n, t in fast.items()}
        logits, _ = forward(task["query_x"], step, frozen, training)
        zero = tf.zeros([], logits.dtype)
        return zero, accuracy(logits, task["query_y"])

    return tf.cond(weight > 0, with_loss,
                   accuracy_only if skip is None else lambda: skip)
