"""PerStepBatchNorm: per-step slots, running statistics, second order."""

import conformance
import keras
import numpy as np
import pytest
import tensorflow as tf

from mamlpp_tf.layers import MetaConv2D, PerStepBatchNorm, batch_moments
from mamlpp_tf.layers.per_step_batch_norm import fused_normalize

CHANNELS = 3


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _inputs(dtype="float32", batch=4):
    return tf.random.normal([batch, 3, 3, CHANNELS], dtype=dtype) * 2.0 + 1.0


def _built(
    num_weight_slots=3, num_statistics_slots=3, running=False, dtype="float32"
):
    layer = PerStepBatchNorm(
        num_weight_slots, num_statistics_slots, running, dtype=dtype
    )
    layer.build((None, 3, 3, CHANNELS))
    # Distinct rows, so that using the wrong slot shows.
    layer.gamma.assign(
        np.arange(1, 1 + num_weight_slots * CHANNELS).reshape(
            num_weight_slots, CHANNELS
        )
        / 4.0
    )
    layer.beta.assign(-layer.gamma.numpy())
    layer.moving_mean.assign(
        np.random.default_rng(1).normal(size=(num_statistics_slots, CHANNELS))
    )
    layer.moving_variance.assign(
        np.random.default_rng(2).uniform(
            0.5, 2.0, size=(num_statistics_slots, CHANNELS)
        )
    )
    return layer


def _reference(x, gamma, beta, mean, variance, epsilon=1e-5):
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


def test_batch_moments_are_the_mean_and_biased_variance():
    x = _inputs("float64").numpy()
    mean, variance = batch_moments(tf.constant(x))
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(variance, x.var(axis=(0, 1, 2)), rtol=1e-12)


def _input_gradient(x, c):
    """d/dx sum(c * BN(x)): its own derivative needs second order."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        mean, variance = batch_moments(x)
        y = (x - mean) * tf.math.rsqrt(variance + 1e-5)
        loss = tf.reduce_sum(c * y)
    return tape.gradient(loss, x)


def test_batch_moments_second_derivatives_match_finite_differences():
    # tf.nn.moments stops the gradient of the mean inside the variance:
    # first derivatives stay right, second derivatives come out wrong.
    x = tf.random.normal([3, 2, 2], dtype="float64")
    c = tf.random.normal([3, 2, 2], dtype="float64")
    theoretical, numerical = tf.test.compute_gradient(
        lambda v: _input_gradient(v, c), [x], delta=1e-6
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


def test_conv_bias_before_bn_has_zero_second_order_gradient():
    # BN with batch statistics removes a conv bias, so |d loss/d kernel|^2
    # does not depend on it. A stopped gradient in the variance gives a
    # large non-zero value here (595 measured on a small network).
    conv = MetaConv2D(CHANNELS, dtype="float64")
    norm = PerStepBatchNorm(dtype="float64")
    x = tf.random.normal([4, 5, 5, 2], dtype="float64")
    conv.build(x.shape)
    norm.build((None, 5, 5, CHANNELS))
    target = tf.random.normal([4, 5, 5, CHANNELS], dtype="float64")
    kernel = tf.convert_to_tensor(conv.kernel)
    bias = tf.random.normal([CHANNELS], dtype="float64")
    with tf.GradientTape() as outer:
        outer.watch(bias)
        with tf.GradientTape() as inner:
            inner.watch(kernel)
            y = norm(
                conv(x, params={"kernel": kernel, "bias": bias}),
                step=0,
                training=True,
            )
            loss = tf.reduce_sum(tf.square(y - target))
        grad_kernel = inner.gradient(loss, kernel)
        grad_norm_sq = tf.reduce_sum(tf.square(grad_kernel))
    np.testing.assert_allclose(
        outer.gradient(grad_norm_sq, bias), 0.0, atol=1e-8
    )


@pytest.mark.parametrize("step,slot", [(0, 0), (1, 1), (2, 2), (4, 2)])
def test_step_selects_its_weight_slot_and_reuses_the_last(step, slot):
    layer = _built()
    x = _inputs()
    got = layer(x, step=step, training=True)
    mean, variance = x.numpy().mean((0, 1, 2)), x.numpy().var((0, 1, 2))
    expected = _reference(
        x.numpy(),
        layer.gamma.numpy()[slot],
        layer.beta.numpy()[slot],
        mean,
        variance,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("step", [0, 1, 2])
def test_gradients_reach_only_the_slot_of_the_step(step):
    layer = _built()
    x = _inputs()
    params = {
        "gamma": tf.convert_to_tensor(layer.gamma),
        "beta": tf.convert_to_tensor(layer.beta),
    }
    with tf.GradientTape() as tape:
        tape.watch(list(params.values()))
        y = layer(x, step=step, params=params, training=True)
        loss = tf.reduce_sum(y * tf.random.normal(y.shape))
    grads = tape.gradient(loss, params)
    for name in ("gamma", "beta"):
        grad = grads[name].numpy()
        others = np.delete(grad, step, axis=0)
        np.testing.assert_array_equal(others, 0.0, err_msg=name)
        assert np.all(np.abs(grad[step]) > 0), name


def test_fast_weights_replace_the_variables():
    layer = _built()
    x = _inputs()
    params = {
        "gamma": tf.ones([3, CHANNELS]) * 2.0,
        "beta": tf.ones([3, CHANNELS]) * 0.5,
    }
    got = layer(x, step=1, params=params, training=True)
    mean, variance = x.numpy().mean((0, 1, 2)), x.numpy().var((0, 1, 2))
    np.testing.assert_allclose(
        got,
        _reference(x.numpy(), 2.0, 0.5, mean, variance),
        rtol=1e-4,
        atol=1e-5,
    )


def test_normalize_matches_values_worked_by_hand():
    # Per channel, 2 samples: [1, 3] (mean 2, biased variance 1), [0, 4]
    # (mean 2, variance 4) and [5, 5] (variance 0). gamma 2, beta 0.5:
    # 0.5 +- 2 / sqrt(1 + 1e-5) = 0.5 +- 1.99999, 0.5 +- 2 * 2 /
    # sqrt(4 + 1e-5) = 0.5 +- 1.9999975, and 0.5 where x equals the mean.
    layer = PerStepBatchNorm(dtype="float64")
    layer.build((None, 1, 1, CHANNELS))
    layer.gamma.assign([[2.0, 2.0, 2.0]])
    layer.beta.assign([[0.5, 0.5, 0.5]])
    x = tf.constant([[1.0, 0.0, 5.0], [3.0, 4.0, 5.0]], tf.float64)
    y, (mean, variance) = layer.normalize(
        tf.reshape(x, [2, 1, 1, CHANNELS]), step=0, training=True
    )
    np.testing.assert_allclose(mean, [2.0, 2.0, 5.0], rtol=1e-15)
    np.testing.assert_allclose(variance, [1.0, 4.0, 0.0], rtol=1e-15)
    np.testing.assert_allclose(
        tf.reshape(y, [2, CHANNELS]),
        [[-1.49999, -1.4999975, 0.5], [2.49999, 2.4999975, 0.5]],
        rtol=1e-10,
    )


# Running statistics before the update, one row per slot, and the batch
# moments (biased variance) of 5 elements per channel.
BEFORE_MEAN = [[0.0, 1.0, -2.0], [0.5, 0.5, 0.5], [-1.0, 0.0, 1.0]]
BEFORE_VARIANCE = [[1.0, 2.0, 4.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
BATCH_MEAN = [1.0, 2.0, 3.0]
BATCH_VARIANCE = [0.5, 1.0, 2.0]  # Unbiased (x 5/4): 0.625, 1.25, 2.5.
# PyTorch's rule, momentum 0.1: running = 0.9 running + 0.1 batch, with the
# unbiased batch variance. Worked by hand for each slot:
AFTER_MEAN = [[0.1, 1.1, -1.5], [0.55, 0.65, 0.75], [-0.8, 0.2, 1.2]]
AFTER_VARIANCE = [
    [0.9625, 1.925, 3.85],  # 0.9 * [1, 2, 4] + [0.0625, 0.125, 0.25]
    [0.9625, 1.025, 1.15],  # 0.9 * 1 + ...
    [1.8625, 1.925, 2.05],  # 0.9 * 2 + ...
]


@pytest.mark.parametrize("step,slot", [(0, 0), (1, 1), (2, 2), (4, 2)])
def test_update_statistics_moves_only_the_slot_of_the_step(step, slot):
    layer = _built()
    layer.moving_mean.assign(BEFORE_MEAN)
    layer.moving_variance.assign(BEFORE_VARIANCE)
    layer.update_statistics(
        step,
        np.float32(BATCH_MEAN),
        np.float32(BATCH_VARIANCE),
        count=5,
    )
    expected_mean = np.array(BEFORE_MEAN)
    expected_variance = np.array(BEFORE_VARIANCE)
    expected_mean[slot] = AFTER_MEAN[slot]
    expected_variance[slot] = AFTER_VARIANCE[slot]
    np.testing.assert_allclose(layer.moving_mean, expected_mean, rtol=1e-6)
    np.testing.assert_allclose(
        layer.moving_variance, expected_variance, rtol=1e-6
    )


def test_running_mode_normalises_with_running_statistics_in_evaluation():
    layer = _built(running=True)
    x = _inputs()
    y, moments = layer.normalize(x, step=1, training=False)
    assert moments is None
    expected = _reference(
        x.numpy(),
        layer.gamma.numpy()[1],
        layer.beta.numpy()[1],
        layer.moving_mean.numpy()[1],
        layer.moving_variance.numpy()[1],
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "running,training", [(True, True), (False, True), (False, False)]
)
def test_batch_statistics_otherwise(running, training):
    layer = _built(running=running)
    x = _inputs()
    y, (mean, variance) = layer.normalize(x, step=1, training=training)
    np.testing.assert_allclose(mean, x.numpy().mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(variance, x.numpy().var((0, 1, 2)), rtol=1e-5)
    expected = _reference(
        x.numpy(),
        layer.gamma.numpy()[1],
        layer.beta.numpy()[1],
        x.numpy().mean((0, 1, 2)),
        x.numpy().var((0, 1, 2)),
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_snapshot_restores_and_does_not_alias():
    layer = _built()
    snapshot = layer.snapshot_statistics()
    saved = {k: v.numpy().copy() for k, v in snapshot.items()}
    layer.update_statistics(
        1, tf.ones([CHANNELS]) * 7.0, tf.ones([CHANNELS]) * 7.0, count=4
    )
    layer.moving_mean.assign_add(tf.ones_like(layer.moving_mean))
    assert not np.allclose(layer.moving_mean.numpy(), saved["moving_mean"])
    for key, value in snapshot.items():  # The snapshot did not move along.
        np.testing.assert_array_equal(value, saved[key], err_msg=key)
    layer.restore_statistics(snapshot)
    np.testing.assert_array_equal(layer.moving_mean, saved["moving_mean"])
    np.testing.assert_array_equal(
        layer.moving_variance, saved["moving_variance"]
    )


def test_invalid_steps_and_slots_raise():
    layer = _built()
    with pytest.raises(ValueError, match="step must be a Python int >= 0"):
        layer(_inputs(), step=-1)
    with pytest.raises(ValueError, match="step must be a Python int >= 0"):
        layer(_inputs(), step=tf.constant(0))
    with pytest.raises(ValueError, match="num_weight_slots must be an int"):
        PerStepBatchNorm(num_weight_slots=0)
    with pytest.raises(ValueError, match="count must be >= 2"):
        layer.update_statistics(
            0, tf.zeros([CHANNELS]), tf.ones([CHANNELS]), count=1
        )


def _call_eval(layer, x):
    return layer(x, step=1, training=False)


def test_traces_once_under_tf_function():
    conformance.assert_traces_once(_built(running=True), _call_eval, _inputs())


def test_get_config_round_trips():
    layer = PerStepBatchNorm(2, 3, True, momentum=0.3, epsilon=1e-3)
    layer.build((None, 3, 3, CHANNELS))
    clone = conformance.assert_config_round_trips(layer, _call_eval, _inputs())
    # Every __init__ argument, each with a non-default value.
    assert (clone.num_weight_slots, clone.num_statistics_slots) == (2, 3)
    assert clone.use_running_statistics
    assert (clone.momentum, clone.epsilon) == (0.3, 1e-3)


def test_saved_model_gives_the_same_outputs(tmp_path):
    conformance.assert_saved_model_matches(
        _built(running=True), _call_eval, _inputs(), tmp_path
    )


def test_fused_normalize_matches_the_written_out_formula_to_second_order():
    # The fused kernels take float32 (not float64): compare at float32
    # precision, values, moments and the derivative of an input gradient.
    x = tf.random.normal([4, 5, 5, 3]) * 2.0 + 0.5
    gamma = tf.random.normal([3]) + 1.0
    beta = tf.random.normal([3])
    c = tf.random.normal([4, 5, 5, 3])

    def written_out(x, gamma):
        mean, variance = batch_moments(x)
        scale = gamma * tf.math.rsqrt(variance + 1e-5)
        return x * scale + (beta - mean * scale), (mean, variance)

    def fused(x, gamma):
        return fused_normalize(x, gamma, beta, 1e-5)

    results = []
    for normalize in (written_out, fused):
        with tf.GradientTape() as outer:
            outer.watch([x, gamma])
            with tf.GradientTape() as inner:
                inner.watch([x, gamma])
                y, moments = normalize(x, gamma)
                loss = tf.reduce_sum(tf.sin(y) * c)
            grad_x, grad_gamma = inner.gradient(loss, [x, gamma])
            second = tf.reduce_sum(grad_x**2) + tf.reduce_sum(grad_gamma**2)
        results.append((y, moments, outer.gradient(second, [x, gamma])))
    (y0, m0, g0), (y1, m1, g1) = results
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m1[0], m0[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m1[1], m0[1], rtol=1e-5)  # Biased, both.
    for got, want in zip(g1, g0):
        scale = np.abs(want.numpy()).max()
        np.testing.assert_allclose(got, want, atol=1e-4 * scale)


def test_fused_layer_falls_back_for_float64():
    layer = PerStepBatchNorm(fused=True, dtype="float64")
    x = _inputs("float64")
    y = layer(x, step=0, training=True)
    assert y.dtype == tf.float64
    mean, variance = x.numpy().mean((0, 1, 2)), x.numpy().var((0, 1, 2))
    np.testing.assert_allclose(
        y, _reference(x.numpy(), 1.0, 0.0, mean, variance), rtol=1e-10
    )
