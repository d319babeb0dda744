"""One meta-step over a batch of tasks: per-task meta-gradients, summed.

The tasks of a meta-batch are looped over inside the graph (`tf.map_fn`);
each iteration differentiates its own task's query loss through its own
inner loop and returns the gradients, so the outer tape never has to hold
more than one task and the trace covers one task, not the whole batch.
"""

from __future__ import annotations

import tensorflow as tf

from mamlpp_tf import inner_loop

TASK_KEYS = ("support_x", "support_y", "query_x", "query_y")


def check_batch(batch, config) -> None:
    """Raises ValueError unless `batch` matches the core API's shapes."""
    missing = [k for k in TASK_KEYS if k not in batch]
    if missing:
        raise ValueError(
            f"The episode batch lacks {missing}; it needs the keys "
            f"{list(TASK_KEYS)}."
        )
    h, w, c = config.image_shape
    expected = {
        "support_x": (None, config.num_ways * config.num_shots, h, w, c),
        "support_y": (None, config.num_ways * config.num_shots),
        "query_x": (None, config.num_ways * config.num_queries, h, w, c),
        "query_y": (None, config.num_ways * config.num_queries),
    }
    for key, shape in expected.items():
        got = tuple(batch[key].shape)
        if len(got) != len(shape) or any(
            e is not None and g is not None and g != e
            for g, e in zip(got, shape)
        ):
            raise ValueError(
                f"batch[{key!r}] has shape {got}; expected {shape} "
                "([tasks, ways*shots or ways*queries, H, W, C]) for "
                f"num_ways={config.num_ways}, num_shots={config.num_shots}, "
                f"num_queries={config.num_queries}, image_shape="
                f"{config.image_shape}."
            )


def task_meta_gradients(
    forward, rate, params: dict, rates: dict, task: dict, *, num_steps: int,
    adapted_names, second_order: bool, loss_weights,
    every_step_accuracy: bool = True, separate_query_backward: bool = True,
):
    """One task's query loss and its gradients w.r.t. params and rates.

    Args:
      separate_query_backward: differentiate each query loss at once, on
        its own tape, and push its gradients through the inner loop in one
        backward pass at the end (`inner_loop.pull_back`). The outer tape
        then records the support passes only, and no more than one query
        pass's activations are alive at a time. False differentiates the
        weighted query loss through the outer tape, which keeps every
        query pass's activations (with MSL, one pass per inner step) until
        the end. The same meta-gradient either way, up to the order of
        float additions.

    Returns (loss, param grads dict, rate grads dict, InnerLoopResult).
    """
    watched = list(params.values()) + list(rates.values())
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(watched)
        result = inner_loop.run_inner_loop(
            forward, rate, params, task, num_steps=num_steps,
            adapted_names=adapted_names, second_order=second_order,
            training=True, loss_weights=loss_weights, outer_tape=tape,
            every_step_accuracy=every_step_accuracy,
            separate_query_backward=separate_query_backward,
        )
    if separate_query_backward:
        grads = inner_loop.pull_back(tape, watched, result.query_cotangents)
    else:
        grads = tape.gradient(
            result.loss, watched,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
    param_grads = dict(zip(params, grads[: len(params)], strict=True))
    rate_grads = dict(zip(rates, grads[len(params):], strict=True))
    return result.loss, param_grads, rate_grads, result


def batch_meta_gradients(
    forward, rate_fn, params: dict, rates: dict, batch: dict, *,
    num_steps: int, adapted_names, second_order: bool, loss_weights,
    moment_channels: list[int], parallel_iterations: int = 1,
    every_step_accuracy: bool = True, separate_query_backward: bool = True,
):
    """Sums over the tasks of `batch` (loop in the graph).

    Args:
      rate_fn: rate_fn(rates) -> a `Rate` over the given rate tensors.
      moment_channels: channels of each BN stage (shapes of the moments).
      parallel_iterations: tasks in flight at once in the graph loop.
      every_step_accuracy: see `inner_loop.run_inner_loop`.
      separate_query_backward: see `task_meta_gradients`.

    Returns a dict: "losses" [tasks] (each task's loss), "param_grads" and
    "rate_grads" (sums over tasks), "accuracy" [tasks], "step_accuracies"
    [tasks, steps], "step_losses" [tasks, steps], and "moments": per step,
    per stage, (mean, variance) summed over tasks (or None).
    """

    def one_task(task):
        loss, pgrads, rgrads, result = task_meta_gradients(
            forward, rate_fn(rates), params, rates, task,
            num_steps=num_steps, adapted_names=adapted_names,
            second_order=second_order, loss_weights=loss_weights,
            every_step_accuracy=every_step_accuracy,
            separate_query_backward=separate_query_backward,
        )
        return {
            "loss": loss,
            "param_grads": pgrads,
            "rate_grads": rgrads,
            "step_accuracies": result.step_accuracies,
            "step_losses": result.step_losses,
            "moments": result.support_moments,
        }

    task_batch = {k: batch[k] for k in TASK_KEYS}
    dtype = params[adapted_names[0]].dtype
    spec = lambda shape: tf.TensorSpec(shape, dtype)  # noqa: E731
    signature = {
        "loss": spec([]),
        "param_grads": {n: spec(t.shape) for n, t in params.items()},
        "rate_grads": {n: spec(t.shape) for n, t in rates.items()},
        "step_accuracies": spec([num_steps]),
        "step_losses": spec([num_steps]),
        "moments": [[(spec([c]), spec([c])) for c in moment_channels]
                    for _ in range(num_steps)],
    }
    per_task = tf.map_fn(
        one_task, task_batch, fn_output_signature=signature,
        parallel_iterations=parallel_iterations,
    )
    sum_tasks = lambda t: tf.reduce_sum(t, axis=0)  # noqa: E731
    return {
        "losses": per_task["loss"],
        "param_grads": tf.nest.map_structure(sum_tasks,
                                             per_task["param_grads"]),
        "rate_grads": tf.nest.map_structure(sum_tasks,
                                            per_task["rate_grads"]),
        "accuracy": per_task["step_accuracies"][:, -1],
        "step_accuracies": per_task["step_accuracies"],
        "step_losses": per_task["step_losses"],
        "moments": tf.nest.map_structure(sum_tasks, per_task["moments"]),
    }

