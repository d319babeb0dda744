"""meta_step: batch checks and the sum of per-task meta-gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mamlpp_tf
from mamlpp_tf import meta_step

CONFIG = mamlpp_tf.maml(
    num_ways=2, num_shots=1, num_queries=3, image_shape=(5, 5, 2), num_stages=2
)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _batch(tasks=3, support=2, query=6, shape=(5, 5, 2)):
    return {
        "support_x": tf.zeros([tasks, support, *shape]),
        "support_y": tf.zeros([tasks, support], tf.int32),
        "query_x": tf.zeros([tasks, query, *shape]),
        "query_y": tf.zeros([tasks, query], tf.int32),
    }


def test_check_batch_accepts_the_configured_shapes():
    meta_step.check_batch(_batch(), CONFIG)
    meta_step.check_batch(_batch(tasks=1), CONFIG)


def test_check_batch_names_missing_keys():
    batch = _batch()
    del batch["query_y"]
    with pytest.raises(ValueError, match=r"lacks \['query_y'\]"):
        meta_step.check_batch(batch, CONFIG)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"support": 3}, "support_x"),
        ({"query": 2}, "query_x"),
        ({"shape": (5, 5, 1)}, "support_x"),
    ],
)
def test_check_batch_names_the_bad_shape_and_the_expected_one(kwargs, key):
    with pytest.raises(
        ValueError,
        match=rf"batch\['{key}'\] has shape .*"
        r"expected .*num_ways=2",
    ):
        meta_step.check_batch(_batch(**kwargs), CONFIG)


def test_check_batch_rejects_a_missing_task_axis():
    batch = _batch()
    batch["support_y"] = batch["support_y"][0]
    with pytest.raises(ValueError, match=r"batch\['support_y'\] has shape"):
        meta_step.check_batch(batch, CONFIG)


def _toy_forward(x, step, params, training):
    """Logits [n, 2] = [0, w * mean(x) + c]; no BN stages."""
    z = params["w"] * tf.reduce_mean(x, axis=[1, 2, 3]) + params["c"]
    return tf.stack([tf.zeros_like(z), z], axis=1), []


def _random_batch(tasks):
    return {
        "support_x": tf.random.normal([tasks, 2, 2, 2, 1], dtype=tf.float64),
        "support_y": tf.constant([[0, 1]] * tasks, tf.int32),
        "query_x": tf.random.normal([tasks, 4, 2, 2, 1], dtype=tf.float64),
        "query_y": tf.constant([[0, 1, 1, 0]] * tasks, tf.int32),
    }


@pytest.mark.parametrize("second_order", [True, False])
def test_batch_meta_gradients_sum_the_tasks(second_order):
    params = {
        "w": tf.constant(0.3, tf.float64),
        "c": tf.constant(-0.2, tf.float64),
    }
    rates = {"w": tf.constant([0.4, 0.6], tf.float64)}
    rate_fn = lambda r: lambda name, step: r[name][step]
    weights = tf.constant([0.25, 0.75], tf.float64)
    batch = _random_batch(3)
    kwargs = {
        "num_steps": 2,
        "adapted_names": ["w"],
        "second_order": second_order,
        "loss_weights": weights,
    }
    sums = meta_step.batch_meta_gradients(
        _toy_forward,
        rate_fn,
        params,
        rates,
        batch,
        moment_channels=[],
        parallel_iterations=2,
        **kwargs,
    )
    losses, pgrads, rgrads = [], [], []
    for t in range(3):
        task = {k: v[t] for k, v in batch.items()}
        loss, pg, rg, _ = meta_step.task_meta_gradients(
            _toy_forward, rate_fn(rates), params, rates, task, **kwargs
        )
        losses.append(loss)
        pgrads.append(pg)
        rgrads.append(rg)
    np.testing.assert_allclose(sums["losses"], losses, rtol=1e-12)
    for name in params:
        np.testing.assert_allclose(
            sums["param_grads"][name],
            np.sum([g[name] for g in pgrads]),
            rtol=1e-12,
        )
        assert np.abs(sums["param_grads"][name]) > 0
    np.testing.assert_allclose(
        sums["rate_grads"]["w"],
        np.sum([g["w"] for g in rgrads], axis=0),
        rtol=1e-12,
    )
    assert sums["step_losses"].shape == (3, 2)
    assert sums["step_accuracies"].shape == (3, 2)
    np.testing.assert_array_equal(
        sums["accuracy"], sums["step_accuracies"][:, -1]
    )
