"""tf.distribute, XLA and mixed precision give the plain path's results."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from mamlpp_tf import config as config_lib
from mamlpp_tf import distribute
from mamlpp_tf import learner as learner_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny(**overrides):
    return config_lib.mamlpp(
        num_ways=3, num_shots=2, num_queries=2, meta_batch_size=2,
        image_shape=(8, 8, 1), num_filters=4, num_stages=2,
        num_inner_steps=2, num_eval_inner_steps=2,
        first_order_to_second_order_epoch=-1, **overrides,
    )


def _batch(config, seed=0):
    rng = np.random.default_rng(seed)
    t, n = config.meta_batch_size, config.num_ways
    shots, queries = n * config.num_shots, n * config.num_queries
    return {
        "support_x": tf.constant(rng.random((t, shots, 8, 8, 1), np.float32)),
        "support_y": tf.constant(np.tile(np.repeat(
            np.arange(n, dtype=np.int32), config.num_shots), (t, 1))),
        "query_x": tf.constant(rng.random((t, queries, 8, 8, 1), np.float32)),
        "query_y": tf.constant(np.tile(np.repeat(
            np.arange(n, dtype=np.int32), config.num_queries), (t, 1))),
    }


def _pair(config, **kwargs):
    keras.utils.set_random_seed(0)
    plain = learner_lib.MetaLearner(config)
    other = learner_lib.MetaLearner(config, **kwargs)
    for a, b in zip(plain.trainable_variables, other.trainable_variables):
        b.assign(a.numpy())
    return plain, other


def _assert_same_weights(plain, other, atol):
    for name, a, b in zip(plain.trainable_variable_names,
                          plain.trainable_variables,
                          other.trainable_variables):
        if name.startswith("network/conv") and name.endswith("/bias"):
            # BN cancels conv biases: their meta-gradient is rounding noise,
            # which Adam turns into +-lr steps of either sign.
            continue
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=atol,
                                   err_msg=name)


def test_mirrored_two_logical_cpus_matches_one_device():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/helpers/mirrored_equivalence.py")],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    for epoch in (0, 1):
        assert result[f"loss_diff_{epoch}"] <= 1e-5 * max(
            1.0, result[f"loss_{epoch}"])
    for name, diff in result["per_variable"].items():
        if name.startswith("network/conv") and name.endswith("/bias"):
            continue  # See _assert_same_weights.
        assert diff <= 1e-5, (name, diff)
    assert result["bn_stat_diff"] <= 1e-5
    assert result["eval_accuracy_diff"] == 0.0
    assert result["eval_task_count"] == 4
    assert result["pipeline_matches"]


def test_jit_compile_matches_the_plain_step():
    config = _tiny()
    plain, jitted = _pair(config, jit_compile=True)
    batch = _batch(config)
    m1, m2 = plain.train_step(batch, 0), jitted.train_step(batch, 0)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    _assert_same_weights(plain, jitted, atol=1e-5)
    e1, l1 = plain.eval_step(batch)
    e2, l2 = jitted.eval_step(batch)
    np.testing.assert_allclose(l2, l1, atol=1e-4)


def test_bfloat16_keeps_state_in_float32_and_stays_close():
    config = _tiny()
    plain, mixed = _pair(config, mixed_precision="bfloat16")
    batch = _batch(config)
    m1, m2 = plain.train_step(batch, 0), mixed.train_step(batch, 0)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=3e-2)
    assert m2["loss"].dtype == np.float32
    assert {v.dtype for v in mixed.trainable_variables} == {"float32"}
    for norm in mixed.norm_layers:
        assert norm.moving_mean.dtype == "float32"
    # Only the convolutions/matmuls round: it is not the plain graph.
    assert m2["loss"] != m1["loss"]


def test_runtime_config_rejects_bad_input():
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.RuntimeConfig(strategy="horovod")
    with pytest.raises(ValueError, match="--tpu=local"):
        distribute.RuntimeConfig(strategy="tpu")
    with pytest.raises(ValueError, match="only read with strategy='tpu'"):
        distribute.RuntimeConfig(strategy="mirrored", tpu="local")
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        distribute.RuntimeConfig(mixed_precision="float16")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        env = os.environ.pop("TF_CONFIG", None)
        try:
            distribute.make_strategy("multi_worker")
        finally:
            if env is not None:
                os.environ["TF_CONFIG"] = env


def test_meta_batch_must_split_over_replicas():
    class FakeStrategy:
        num_replicas_in_sync = 3

    with pytest.raises(ValueError, match="does not split over 3 replicas"):
        from mamlpp_tf import data as data_lib
        distribute.episode_batches(
            FakeStrategy(), None,
            data_lib.EpisodeConfig(num_ways=2, num_shots=1, num_queries=1,
                                   meta_batch_size=4),
            split="train",
        )
