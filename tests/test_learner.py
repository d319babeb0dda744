"""MetaLearner: meta-gradients, updates, BN statistics, evaluation.

Tiny shapes throughout (2-way 1-shot, 5x5x2 images, two stages of three
filters, two inner steps) so that float64 finite differences over every
weight take about a second.
"""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import mamlpp_tf
from mamlpp_tf import inner_loop, meta_step, schedules

SHAPE = (5, 5, 2)
NUM_STEPS = 2
# Elements per channel behind each stage's batch moments (2 images): 5x5
# at stage 0, then 2x2 after a max-pool, or 3x3 then 2x2 with stride 2.
STAGE_COUNTS = {
    "max_pool": (2 * 5 * 5, 2 * 2 * 2),
    "strided": (2 * 3 * 3, 2 * 2 * 2),
}


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _config(preset=mamlpp_tf.mamlpp, **overrides):
    values = {
        "num_ways": 2,
        "num_shots": 1,
        "num_queries": 1,
        "meta_batch_size": 2,
        "image_shape": SHAPE,
        "num_filters": 3,
        "num_stages": 2,
        "num_inner_steps": NUM_STEPS,
        "num_eval_inner_steps": NUM_STEPS,
        "first_order_to_second_order_epoch": -1,
        "msl_epochs": 3,
        "total_epochs": 10,
    }
    values.update(overrides)
    return preset(**values)


def _batch(config, tasks=2, seed=0):
    """Random images; labels a fresh permutation of the classes per task."""
    rng = np.random.default_rng(seed)
    n, dtype = config.num_ways, config.dtype

    def labels(per_class):
        return np.stack(
            [np.repeat(rng.permutation(n), per_class) for _ in range(tasks)]
        ).astype(np.int32)

    return {
        "support_x": tf.constant(
            rng.normal(size=(tasks, n * config.num_shots, *SHAPE)).astype(dtype)
        ),
        "support_y": tf.constant(labels(config.num_shots)),
        "query_x": tf.constant(
            rng.normal(size=(tasks, n * config.num_queries, *SHAPE)).astype(
                dtype
            )
        ),
        "query_y": tf.constant(labels(config.num_queries)),
    }


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _bn_statistics(learner):
    return [
        v.numpy().copy()
        for norm in learner.norm_layers
        for v in (norm.moving_mean, norm.moving_variance)
    ]


def _copy_weights(source, target):
    for src, dst in zip(
        source.trainable_variables, target.trainable_variables, strict=True
    ):
        dst.assign(src)


# -- Meta-gradients ------------------------------------------------------


def _finite_difference_gradients(learner, batch, epoch, delta=1e-6):
    """Central differences of the meta-loss w.r.t. every variable entry."""
    grads = []
    for variable in learner.trainable_variables:
        start = variable.numpy()
        grad = np.zeros_like(start)
        for index in np.ndindex(start.shape):
            values = []
            for sign in (1.0, -1.0):
                moved = start.copy()
                moved[index] += sign * delta
                variable.assign(moved)
                values.append(
                    float(learner.compute_meta_gradients(batch, epoch)[0])
                )
            grad[index] = (values[0] - values[1]) / (2 * delta)
        variable.assign(start)
        grads.append(grad)
    return grads


@pytest.mark.parametrize(
    "overrides",
    [
        # Every MAML++ part, MSL weights [0.5, 0.5] at epoch 0.
        {},
        # BN gamma/beta adapted too, strided convs, running-statistics mode.
        {
            "adapt_bn_in_inner_loop": True,
            "downsampling": "strided",
            "bn_mode": "per_step_running",
            "multi_step_loss": False,
        },
    ],
    ids=["mamlpp", "adapt_bn_strided"],
)
def test_second_order_meta_gradients_match_finite_differences(overrides):
    # Through the per-step batch norm: a stopped gradient of the mean
    # inside the variance (tf.nn.moments) makes the conv-bias entries
    # alone differ by orders of magnitude.
    learner = mamlpp_tf.MetaLearner(
        _config(dtype="float64", inner_lr_init=0.3, **overrides)
    )
    batch = _batch(learner.config)
    _, grads = learner.compute_meta_gradients(batch, epoch=0)
    numerical = _finite_difference_gradients(learner, batch, epoch=0)
    names = learner.trainable_variable_names
    scale = max(np.abs(g).max() for g in numerical)
    for name, got, expected in zip(names, grads, numerical, strict=True):
        np.testing.assert_allclose(
            got, expected, rtol=1e-4, atol=1e-6 * scale, err_msg=name
        )
    for name, got in zip(names, grads, strict=True):
        if name.startswith("network/conv") and name.endswith("/bias"):
            # BN with batch statistics removes a conv bias entirely.
            np.testing.assert_allclose(got, 0.0, atol=1e-12, err_msg=name)


def _first_order_reference(learner, batch):
    """First-order MAML by hand, eagerly: the query loss's gradient at the
    fast weights, and d loss / d rate_k = -<grad at fast weights, support
    grad of step k>. Final-step loss only (MSL off)."""
    model, names = learner.model, learner.adapted_names
    params = {
        n: tf.convert_to_tensor(v) for n, v in model.named_variables().items()
    }
    rates = {n: learner.inner_rates.rates[n].numpy() for n in names}
    num_tasks = int(batch["support_x"].shape[0])
    param_grads = {n: 0.0 for n in params}
    rate_grads = {n: np.zeros(NUM_STEPS) for n in names}
    for t in range(num_tasks):
        fast, support_grads = dict(params), []
        for step in range(NUM_STEPS):
            with tf.GradientTape() as tape:
                tape.watch([fast[n] for n in names])
                logits, _ = model.forward(
                    batch["support_x"][t], step=step, params=fast, training=True
                )
                loss = inner_loop.cross_entropy(logits, batch["support_y"][t])
            grads = dict(
                zip(
                    names,
                    tape.gradient(loss, [fast[n] for n in names]),
                    strict=True,
                )
            )
            support_grads.append(grads)
            fast = {
                n: fast[n] - rates[n][step] * grads[n]
                if n in grads
                else fast[n]
                for n in fast
            }
        with tf.GradientTape() as tape:
            tape.watch(list(fast.values()))
            logits, _ = model.forward(
                batch["query_x"][t],
                step=NUM_STEPS - 1,
                params=fast,
                training=True,
            )
            loss = inner_loop.cross_entropy(logits, batch["query_y"][t])
        query_grads = tape.gradient(loss, fast)
        for n in params:
            param_grads[n] += query_grads[n].numpy() / num_tasks
        for n in names:
            for step in range(NUM_STEPS):
                rate_grads[n][step] -= (
                    np.sum(query_grads[n] * support_grads[step][n]) / num_tasks
                )
    return [param_grads[n] for n in learner.network_names] + [
        rate_grads[n] for n in learner.rate_names
    ]


def test_first_order_gradients_match_the_stop_gradient_formula():
    # DA at epoch 0: first order at epoch 0, second order from epoch 1.
    learner = mamlpp_tf.MetaLearner(
        _config(
            dtype="float64",
            inner_lr_init=0.3,
            multi_step_loss=False,
            first_order_to_second_order_epoch=0,
        )
    )
    batch = _batch(learner.config)
    expected = _first_order_reference(learner, batch)
    _, first = learner.compute_meta_gradients(batch, epoch=0)
    names = learner.trainable_variable_names
    for name, got, want in zip(names, first, expected, strict=True):
        np.testing.assert_allclose(
            got, want, rtol=1e-8, atol=1e-12, err_msg=name
        )
    _, second = learner.compute_meta_gradients(batch, epoch=1)
    kernel = names.index("network/conv0/kernel")
    difference = np.linalg.norm(second[kernel] - first[kernel])
    assert difference > 1e-2 * np.linalg.norm(first[kernel])


@pytest.mark.parametrize(
    "preset,overrides",
    [
        (mamlpp_tf.maml, {}),
        (mamlpp_tf.first_order_maml, {}),
        # (mamlpp itself: the finite-difference test compares every entry.)
        (
            mamlpp_tf.mamlpp,
            {"adapt_bn_in_inner_loop": True, "bn_mode": "per_step_running"},
        ),
    ],
    ids=["maml", "first_order_maml", "mamlpp_adapt_bn"],
)
def test_every_variable_gets_a_finite_nonzero_gradient(preset, overrides):
    learner = mamlpp_tf.MetaLearner(_config(preset, **overrides))
    _, grads = learner.compute_meta_gradients(_batch(learner.config), 0)
    names = learner.trainable_variable_names
    assert len(grads) == len(learner.trainable_variables)
    for name, grad, variable in zip(
        names, grads, learner.trainable_variables, strict=True
    ):
        assert grad is not None, name
        assert grad.shape == variable.shape, name
        assert np.all(np.isfinite(grad)), name
        if name.startswith("network/conv") and name.endswith("/bias"):
            continue  # Removed by BN: its true gradient is 0.
        assert np.any(grad.numpy() != 0), f"{name} gets no gradient"


def test_mixed_precision_is_validated():
    with pytest.raises(
        ValueError,
        match="mixed_precision must be None or 'bfloat16', got 'float16'",
    ):
        mamlpp_tf.MetaLearner(_config(), mixed_precision="float16")
    with pytest.raises(ValueError, match="needs dtype='float32'"):
        mamlpp_tf.MetaLearner(
            _config(dtype="float64"), mixed_precision="bfloat16"
        )


def test_bfloat16_matmuls_keep_float32_state_and_close_gradients():
    config = _config(mamlpp_tf.first_order_maml)
    plain = mamlpp_tf.MetaLearner(config)
    mixed = mamlpp_tf.MetaLearner(config, mixed_precision="bfloat16")
    _copy_weights(plain, mixed)
    batch = _batch(config)
    loss, grads = plain.compute_meta_gradients(batch, epoch=0)
    mixed_loss, mixed_grads = mixed.compute_meta_gradients(batch, epoch=0)
    assert all(v.dtype == "float32" for v in mixed.trainable_variables)
    assert all(g.dtype == tf.float32 for g in mixed_grads)
    np.testing.assert_allclose(mixed_loss, loss, rtol=0.05)
    assert float(mixed_loss) != float(loss)  # It did run in bfloat16.
    flat = np.concatenate([g.numpy().ravel() for g in grads])
    mixed_flat = np.concatenate([g.numpy().ravel() for g in mixed_grads])
    cosine = (
        flat @ mixed_flat / np.linalg.norm(flat) / np.linalg.norm(mixed_flat)
    )
    assert cosine > 0.95


# -- Updates ---------------------------------------------------------------


def test_train_step_moves_the_weights_and_the_lslr_rates():
    config = _config(meta_lr=2e-3, min_meta_lr=1e-4)
    learner = mamlpp_tf.MetaLearner(config)
    rates = _values(learner.inner_rates.trainable_weights)
    network = _values(learner.model.trainable_weights)
    metrics = learner.train_step(_batch(config), epoch=4)
    assert metrics["applied"]
    for before, variable in zip(
        rates, learner.inner_rates.trainable_weights, strict=True
    ):
        if variable.name.startswith("conv") and variable.name.endswith("bias"):
            # BN removes a conv bias, so its support gradient and the
            # gradient of its rate vanish: these rates stay put.
            continue
        # Every step's rate moves.
        assert np.all(np.abs(before - variable.numpy()) > 0), variable.name
    for before, variable in zip(
        network, learner.model.trainable_weights, strict=True
    ):
        assert not np.array_equal(before, variable.numpy()), variable.name
    # The metrics.
    assert metrics["per_step_accuracy"].shape == (NUM_STEPS,)
    assert metrics["per_step_loss"].shape == (NUM_STEPS,)
    assert metrics["accuracy"] == metrics["per_step_accuracy"][-1]
    assert np.isfinite(metrics["loss"])
    # CA at epoch 4 of 10 from 2e-3 to 1e-4: 1e-4 + 1.9e-3 * (1 +
    # cos(0.4 pi)) / 2, cos(0.4 pi) = (sqrt(5) - 1) / 4 = 0.3090170.
    assert metrics["meta_lr"] == pytest.approx(1.3435662e-3, rel=1e-7)
    np.testing.assert_allclose(
        float(learner.optimizer.learning_rate), 1.3435662e-3, rtol=1e-6
    )


def test_train_step_rejects_a_batch_of_the_wrong_shape():
    learner = mamlpp_tf.MetaLearner(_config())
    batch = _batch(_config(num_ways=3))
    with pytest.raises(ValueError, match=r"batch\['support_x'\] has shape"):
        learner.train_step(batch, epoch=0)


def _meta_gradients(learner, batch):
    _, grads = learner.compute_meta_gradients(batch, epoch=0)
    return [g.numpy() for g in grads]


def test_meta_grad_clip_clips_network_gradients_not_lslr_rates():
    config = _config(adam_beta1=0.5)
    batch = _batch(config)
    probe = mamlpp_tf.MetaLearner(config)
    grads = _meta_gradients(probe, batch)
    num_network = len(probe.network_names)
    largest_network = max(np.abs(g).max() for g in grads[:num_network])
    largest_rate = max(np.abs(g).max() for g in grads[num_network:])
    clip = 0.5 * min(largest_network, largest_rate)

    learner = mamlpp_tf.MetaLearner(
        _config(adam_beta1=0.5, meta_grad_clip=float(clip))
    )
    _copy_weights(probe, learner)
    learner.train_step(batch, epoch=0)
    # After one step Adam's first moment is (1 - beta1) * the gradient it
    # was given.
    applied = [m.numpy() / 0.5 for m in learner.optimizer._momentums]
    for name, got, grad in zip(
        learner.trainable_variable_names, applied, grads, strict=True
    ):
        if name.startswith("network/"):
            expected = np.clip(grad, -clip, clip)
        else:
            expected = grad
        np.testing.assert_allclose(
            got, expected, rtol=1e-4, atol=1e-6 * clip, err_msg=name
        )


# -- Non-finite steps ------------------------------------------------------


def _nan_batch(config):
    batch = _batch(config)
    batch["support_x"] = batch["support_x"] * np.nan
    return batch


def _assert_unchanged(before, after):
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(b, a)


def _state(learner):
    return _values(learner.trainable_variables) + _bn_statistics(learner)


def test_a_non_finite_batch_is_skipped_and_consecutive_ones_raise():
    config = _config(bn_mode="per_step_running", max_nonfinite_steps=3)
    learner = mamlpp_tf.MetaLearner(config)
    good, bad = _batch(config), _nan_batch(config)
    state = _state(learner)
    metrics = learner.train_step(bad, epoch=0)
    assert not metrics["applied"]
    _assert_unchanged(state, _state(learner))  # Weights and BN statistics.
    assert int(learner.optimizer.iterations) == 0
    assert not learner.train_step(bad, epoch=0)["applied"]
    assert learner.num_consecutive_skipped_steps == 2
    assert learner.train_step(good, epoch=0)["applied"]  # Resets the count.
    assert learner.num_consecutive_skipped_steps == 0
    for _ in range(2):
        assert not learner.train_step(bad, epoch=0)["applied"]
    with pytest.raises(
        mamlpp_tf.NonFiniteLossError,
        match="3 consecutive meta-steps, the last in epoch 0, had a "
        "non-finite loss or gradient",
    ):
        learner.train_step(bad, epoch=0)
    assert learner.num_skipped_steps == 5
    assert learner.num_consecutive_skipped_steps == 3


def test_an_inf_meta_gradient_is_skipped_even_when_clipped(monkeypatch):
    # Clipping turns +Inf into +clip: the check must come before it.
    original = meta_step.batch_meta_gradients

    def with_inf_gradient(*args, **kwargs):
        sums = original(*args, **kwargs)
        name = next(iter(sums["param_grads"]))
        sums["param_grads"][name] = sums["param_grads"][name] + np.inf
        return sums

    monkeypatch.setattr(meta_step, "batch_meta_gradients", with_inf_gradient)
    config = _config(bn_mode="per_step_running", meta_grad_clip=10.0)
    learner = mamlpp_tf.MetaLearner(config)
    state = _state(learner)
    metrics = learner.train_step(_batch(config), epoch=0)
    assert np.isfinite(metrics["loss"])  # Only the gradient is not.
    assert not metrics["applied"]
    _assert_unchanged(state, _state(learner))
    assert int(learner.optimizer.iterations) == 0
    assert learner.num_skipped_steps == 1


def test_an_inner_lr_that_overflows_is_skipped():
    config = _config(bn_mode="per_step_running", inner_lr_init=1e36)
    learner = mamlpp_tf.MetaLearner(config)
    state = _state(learner)
    assert not learner.train_step(_batch(config), epoch=0)["applied"]
    _assert_unchanged(state, _state(learner))
    assert learner.num_skipped_steps == 1


# -- Batch-norm statistics -------------------------------------------------


def _expected_running_statistics(learner, batch):
    """Slot k after one step from (zeros, ones): the support-pass moments
    of inner step k, averaged over the tasks, with momentum 0.1."""
    model, names = learner.model, learner.adapted_names
    params = {
        n: tf.convert_to_tensor(v) for n, v in model.named_variables().items()
    }
    rate = learner._rate_fn(
        {
            n: tf.convert_to_tensor(r)
            for n, r in learner.inner_rates.rates.items()
        }
    )
    num_tasks = int(batch["support_x"].shape[0])
    moments = np.zeros((NUM_STEPS, 2, 2, 3))  # [step, stage, mean/var, C]
    for t in range(num_tasks):
        fast = dict(params)
        for step in range(NUM_STEPS):
            with tf.GradientTape() as tape:
                tape.watch([fast[n] for n in names])
                logits, stages = model.forward(
                    batch["support_x"][t], step=step, params=fast, training=True
                )
                loss = inner_loop.cross_entropy(logits, batch["support_y"][t])
            moments[step] += np.array(stages) / num_tasks
            grads = dict(
                zip(
                    names,
                    tape.gradient(loss, [fast[n] for n in names]),
                    strict=True,
                )
            )
            fast = inner_loop.inner_update(fast, grads, rate, step)
    expected = []
    counts = STAGE_COUNTS[learner.config.downsampling]
    for stage, count in enumerate(counts):
        mean = 0.1 * moments[:, stage, 0]
        unbiased = moments[:, stage, 1] * count / (count - 1)
        expected += [mean, 0.9 + 0.1 * unbiased]
    return expected


@pytest.mark.parametrize("downsampling", ["max_pool", "strided"])
def test_train_step_moves_running_statistics_slot_k_in_step_k(downsampling):
    config = _config(bn_mode="per_step_running", downsampling=downsampling)
    learner = mamlpp_tf.MetaLearner(config)
    batch = _batch(config)
    expected = _expected_running_statistics(learner, batch)
    learner.train_step(batch, epoch=0)
    got = _bn_statistics(learner)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_allclose(
            g, e, rtol=1e-4, atol=1e-6, err_msg=f"statistics {i}"
        )
    # The slots differ: each saw the weights of its own step.
    assert not np.allclose(got[0][0], got[0][1])


def _shift_running_statistics(learner):
    for norm in learner.norm_layers:
        norm.moving_mean.assign_add(tf.ones_like(norm.moving_mean))
        norm.moving_variance.assign(2.0 * norm.moving_variance)


def test_snapshot_restores_the_statistics_and_does_not_alias():
    learner = mamlpp_tf.MetaLearner(_config(bn_mode="per_step_running"))
    _shift_running_statistics(learner)
    snapshot = learner.snapshot_bn_statistics()
    saved = _bn_statistics(learner)
    _shift_running_statistics(learner)
    learner.norm_layers[0].update_statistics(
        1, tf.ones([3]), tf.ones([3]), count=4
    )
    moved = _bn_statistics(learner)
    assert not any(np.allclose(a, b) for a, b in zip(saved, moved))
    # Changing the variables after the snapshot did not change it.
    copied = [v.numpy() for stage in snapshot for v in stage.values()]
    _assert_unchanged(saved, copied)
    learner.restore_bn_statistics(snapshot)
    _assert_unchanged(saved, _bn_statistics(learner))
    with pytest.raises(ValueError, match="The snapshot has 1 stages"):
        learner.restore_bn_statistics(snapshot[:1])


def test_running_mode_evaluates_with_running_and_trains_with_batch_stats():
    config = _config(bn_mode="per_step_running")
    learner = mamlpp_tf.MetaLearner(config)
    batch = _batch(config)
    _, logits = learner.eval_step(batch)
    loss, _ = learner.compute_meta_gradients(batch, epoch=0)
    _shift_running_statistics(learner)
    _, shifted_logits = learner.eval_step(batch)
    shifted_loss, _ = learner.compute_meta_gradients(batch, epoch=0)
    assert not np.allclose(logits, shifted_logits)
    np.testing.assert_allclose(shifted_loss, loss, rtol=1e-6)


def test_transductive_mode_uses_batch_statistics_always():
    config = _config(bn_mode="transductive")
    learner = mamlpp_tf.MetaLearner(config)
    batch = _batch(config)
    _, logits = learner.eval_step(batch)
    _shift_running_statistics(learner)
    _, shifted_logits = learner.eval_step(batch)
    np.testing.assert_allclose(shifted_logits, logits, rtol=1e-6)


# -- Evaluation ------------------------------------------------------------


def test_eval_step_changes_no_state():
    config = _config(bn_mode="per_step_running")
    learner = mamlpp_tf.MetaLearner(config)
    _shift_running_statistics(learner)
    state = _state(learner)
    metrics, logits = learner.eval_step(_batch(config, tasks=3))
    assert logits.shape == (3, 2, 2)
    assert metrics["task_accuracy"].shape == (3,)
    assert metrics["per_step_accuracy"].shape == (NUM_STEPS,)
    _assert_unchanged(state, _state(learner))


def test_eval_with_more_inner_steps_than_trained_warns_once(caplog):
    config = _config(bn_mode="per_step_running")
    learner = mamlpp_tf.MetaLearner(config)
    batch = _batch(config)
    with caplog.at_level(logging.WARNING, logger="mamlpp_tf.learner"):
        for _ in range(2):
            metrics, logits = learner.eval_step(
                batch, num_inner_steps=NUM_STEPS + 2
            )
    assert metrics["per_step_accuracy"].shape == (NUM_STEPS + 2,)
    assert np.all(np.isfinite(logits))
    warnings = [
        r
        for r in caplog.records
        if "inner steps but 2 were trained" in r.getMessage()
    ]
    assert len(warnings) == 1


@pytest.mark.parametrize("num_inner_steps", [0, -1, 1.0, True])
def test_eval_rejects_impossible_numbers_of_inner_steps(num_inner_steps):
    # 0 used to fall back silently to num_eval_inner_steps.
    config = _config()
    learner = mamlpp_tf.MetaLearner(config)
    batch = _batch(config)
    with pytest.raises(ValueError, match="num_inner_steps must be None"):
        learner.eval_step(batch, num_inner_steps=num_inner_steps)
    with pytest.raises(ValueError, match="num_inner_steps must be None"):
        learner.adapt(
            batch["support_x"][0],
            batch["support_y"][0],
            num_inner_steps=num_inner_steps,
        )


@pytest.mark.parametrize("num_inner_steps", [None, NUM_STEPS + 1])
def test_adapt_and_predict_agree_with_eval_step(num_inner_steps):
    config = _config(bn_mode="per_step_running")
    learner = mamlpp_tf.MetaLearner(config)
    _shift_running_statistics(learner)
    batch = _batch(config)
    _, logits = learner.eval_step(batch, num_inner_steps=num_inner_steps)
    for t in range(2):
        fast = learner.adapt(
            batch["support_x"][t],
            batch["support_y"][t],
            num_inner_steps=num_inner_steps,
        )
        assert sorted(fast) == sorted(learner.adapted_names)
        predicted = learner.predict(
            batch["query_x"][t], fast, num_inner_steps=num_inner_steps
        )
        np.testing.assert_allclose(predicted, logits[t], rtol=1e-4, atol=1e-5)


# -- Every preset and every MAML++ part learns -----------------------------

NUM_LEARNING_STEPS = 40
NUM_EPOCHS = 10  # Spread over the steps, so that DA, MSL and CA all move.


class _PrototypeTasks:
    """A learnable few-shot problem: each class is a fixed random image
    plus noise; every task draws its classes and shuffles their labels."""

    def __init__(self, seed=0, num_classes=20, noise=0.5):
        self._rng = np.random.default_rng(seed)
        self._prototypes = self._rng.normal(size=(num_classes, *SHAPE))
        self._noise = noise

    def batch(self, config, tasks=4):
        n, rng = config.num_ways, self._rng
        out = {"support_x": [], "support_y": [], "query_x": [], "query_y": []}
        for _ in range(tasks):
            classes = rng.choice(len(self._prototypes), n, replace=False)
            labels = rng.permutation(n)
            for split, per_class in (
                ("support", config.num_shots),
                ("query", config.num_queries),
            ):
                images = self._prototypes[classes][
                    :, None
                ] + self._noise * rng.normal(size=(n, per_class, *SHAPE))
                out[f"{split}_x"].append(images.reshape(-1, *SHAPE))
                out[f"{split}_y"].append(np.repeat(labels, per_class))
        return {
            k: tf.constant(
                np.stack(v).astype(np.int32 if k.endswith("_y") else np.float32)
            )
            for k, v in out.items()
        }


def _learning_config(preset, **overrides):
    values = {
        "num_ways": 2,
        "num_shots": 1,
        "num_queries": 2,
        "meta_batch_size": 4,
        "image_shape": SHAPE,
        "num_filters": 4,
        "num_stages": 2,
        "num_inner_steps": NUM_STEPS,
        "num_eval_inner_steps": NUM_STEPS,
        "meta_lr": 1e-2,
        "min_meta_lr": 1e-3,
        "total_epochs": NUM_EPOCHS,
        "msl_epochs": 3,
    }
    values.update(overrides)
    return preset(**values)


@pytest.mark.parametrize(
    "preset,overrides",
    [
        (mamlpp_tf.maml, {}),
        (mamlpp_tf.first_order_maml, {}),
        # DA within the run: first order at epochs 0-4, then second order.
        (mamlpp_tf.mamlpp, {"first_order_to_second_order_epoch": 4}),
        # Each MAML++ part alone over MAML.
        (mamlpp_tf.maml, {"multi_step_loss": True}),  # MSL
        (mamlpp_tf.maml, {"first_order_to_second_order_epoch": 4}),  # DA
        (
            mamlpp_tf.maml,
            {
                "per_step_bn_statistics": True,  # BNRS
                "bn_mode": "per_step_running",
            },
        ),
        (mamlpp_tf.maml, {"per_step_bn_weights": True}),  # BNWB
        (mamlpp_tf.maml, {"learn_inner_lr": True}),  # LSLR
        (mamlpp_tf.maml, {"cosine_annealing": True}),  # CA
    ],
    ids=[
        "maml",
        "first_order_maml",
        "mamlpp",
        "msl",
        "da",
        "bnrs",
        "bnwb",
        "lslr",
        "ca",
    ],
)
def test_learns_a_learnable_task_without_retracing(
    preset, overrides, monkeypatch
):
    monkeypatch.setenv("AUTOGRAPH_STRICT_CONVERSION", "1")
    config = _learning_config(preset, **overrides)
    learner = mamlpp_tf.MetaLearner(config)
    tasks = _PrototypeTasks()
    held_out = tasks.batch(config, tasks=16)
    before, _ = learner.eval_step(held_out)
    losses = []
    for step in range(NUM_LEARNING_STEPS):
        epoch = step * NUM_EPOCHS // NUM_LEARNING_STEPS
        metrics = learner.train_step(tasks.batch(config), epoch=epoch)
        assert metrics["applied"]
        losses.append(float(metrics["loss"]))
    after, _ = learner.eval_step(held_out)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.6 * first, (first, last)
    assert after["loss"] < 0.6 * before["loss"], (before, after)
    assert after["accuracy"] > before["accuracy"]
    # The epoch changed the MSL weights, CA's meta lr and (with DA) the
    # derivative order: one trace per (phase, derivative order), no more.
    orders = {schedules.use_second_order(config, e) for e in range(NUM_EPOCHS)}
    expected = {("train", order, 4) for order in orders} | {("eval", NUM_STEPS)}
    assert set(learner._functions) == expected
    counts = {
        key: fn.experimental_get_tracing_count()
        for key, fn in learner._functions.items()
    }
    assert all(count == 1 for count in counts.values()), counts
