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
      query_cotangents: with `separate_query_backward`, one (tensors,
        gradients) pair per query loss that counts: the fast weights it
        was computed from and its weighted loss's gradients w.r.t. them
        (name -> tensor). Otherwise None.
    """

    loss: tf.Tensor
    step_losses: tf.Tensor
    step_accuracies: tf.Tensor
    logits: tf.Tensor
    support_moments: list
    fast_weights: dict
    query_cotangents: list | None = None


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
    separate_query_backward: bool = False,
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
      separate_query_backward: keep the query passes off `outer_tape`.
        Each query loss that counts is differentiated at once on a tape of
        its own, w.r.t. the fast weights it ran on, and its activations are
        freed before the next query pass starts; the gradients come back
        in `query_cotangents` for the caller to push through the inner
        loop (`outer_tape.gradient(..., output_gradients=...)`). The
        result's `loss` is then not connected to `outer_tape` through the
        query passes. See `meta_step.task_meta_gradients`.
    """
    if separate_query_backward and outer_tape is None:
        raise ValueError("separate_query_backward needs an outer_tape.")
    step_losses, step_accuracies, support_moments = [], [], []
    cotangents = [] if separate_query_backward else None
    # Orders the separate query passes one after another (see below).
    after = []
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
        if separate_query_backward and (last or loss_weights is not None):
            weight = (1.0 if loss_weights is None
                      else tf.cast(loss_weights[step], zero.dtype))
            # A query pass does not start before the previous one's
            # gradients exist, so only one pass's activations are alive.
            with tf.control_dependencies(after):
                query_x = tf.identity(task["query_x"])
            with outer_tape.stop_recording():
                loss, acc, grads, logits = _separate_query(
                    forward, fast, dict(task, query_x=query_x), step,
                    training, weight, always=last, skip=skip)
            after = list(grads.values())
            cotangents.append((fast, grads))
        elif last:
            logits, _ = forward(task["query_x"], step, fast, training)
            loss = cross_entropy(logits, task["query_y"])
            acc = accuracy(logits, task["query_y"])
        elif loss_weights is None:
            loss, acc = skip if skip is not None else (zero, _query_accuracy(
                forward, fast, task, step, training, outer_tape))
        else:
            loss, acc = _weighted_query(forward, fast, task, step, training,
                                        loss_weights[step], skip)
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
        query_cotangents=cotangents,
    )


def _separate_query(forward, fast, task, step, training, weight, *, always,
                    skip):
    """(loss, accuracy, gradients of weight * loss, logits) of one query
    pass, differentiated on its own tape (`separate_query_backward`).

    Unless `always`, a zero weight skips the differentiable pass at run
    time (as `_weighted_query` does) and returns zero gradients; `skip`
    is then the (loss, accuracy) pair returned, or None to run the query
    set for its accuracy.
    """
    names = list(fast)

    def with_grads():
        values = [fast[n] for n in names]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(values)
            logits, _ = forward(task["query_x"], step,
                                dict(zip(names, values)), training)
            loss = cross_entropy(logits, task["query_y"])
            weighted = loss * weight
        grads = tape.gradient(
            weighted, values,
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return loss, accuracy(logits, task["query_y"]), grads, logits

    if always:
        loss, acc, grads, logits = with_grads()
        return loss, acc, dict(zip(names, grads, strict=True)), logits

    def without():
        zeros = [tf.zeros_like(fast[n]) for n in names]
        scored = (skip if skip is not None
                  else _frozen_accuracy(forward, fast, task, step, training))
        return (*scored, zeros)

    loss, acc, grads = tf.cond(weight > 0, lambda: with_grads()[:3], without)
    return loss, acc, dict(zip(names, grads, strict=True)), None


def pull_back(tape, watched, cotangents):
    """Gradients w.r.t. `watched` of the query losses whose gradients
    w.r.t. their fast weights are `cotangents` ((tensors, grads) pairs,
    `InnerLoopResult.query_cotangents`); `tape` recorded the inner loop.

    One backward pass through the inner loop: the chain rule with each
    query loss's gradient as the cotangent of the fast weights it ran on.
    A fast-weight tensor that is a watched tensor itself (not adapted by
    the inner loop) takes its gradient directly.
    """
    direct = {id(t): i for i, t in enumerate(watched)}
    extra = [None] * len(watched)
    targets, output_gradients = [], []
    for fast, grads in cotangents:
        for name, grad in grads.items():
            tensor = fast[name]
            if id(tensor) in direct:
                i = direct[id(tensor)]
                extra[i] = grad if extra[i] is None else extra[i] + grad
            else:
                targets.append(tensor)
                output_gradients.append(grad)
    grads = tape.gradient(
        targets, watched, output_gradients=output_gradients,
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    ) if targets else [tf.zeros_like(t) for t in watched]
    return [g if e is None else g + e for g, e in zip(grads, extra)]


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


def _weighted_query(forward, fast, task, step, training, weight, skip):
    """(loss, accuracy) of the query set at a non-final MSL step.

    A zero weight (MSL annealed out) skips the differentiable pass at run
    time, in the same graph: changing the weights never retraces. With
    `skip`, a (loss, accuracy) pair, a zero weight returns it instead of
    running the query set for its accuracy.
    """

    def with_loss():
        logits, _ = forward(task["query_x"], step, fast, training)
        return (cross_entropy(logits, task["query_y"]),
                accuracy(logits, task["query_y"]))

    def accuracy_only():
        return _frozen_accuracy(forward, fast, task, step, training)

    return tf.cond(weight > 0, with_loss,
                   accuracy_only if skip is None else lambda: skip)


def _frozen_accuracy(forward, fast, task, step, training):
    """(0, query accuracy) at `step`, with no gradient through the pass."""
    frozen = {n: tf.stop_gradient(t) for n, t in fast.items()}
    logits, _ = forward(task["query_x"], step, frozen, training)
    return tf.zeros([], logits.dtype), accuracy(logits, task["query_y"])
