"""MetaConv2D: a 3x3 "same" convolution on its variables or fast weights."""

import conformance
import keras
import numpy as np
import pytest
import tensorflow as tf

from mamlpp_tf.layers import MetaConv2D


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _inputs():
    return tf.random.normal([2, 5, 5, 2])


def _built(strides=1):
    layer = MetaConv2D(4, strides=strides)
    layer.build((None, 5, 5, 2))
    layer.bias.assign(tf.random.normal([4]))
    return layer


@pytest.mark.parametrize("strides", [1, 2])
def test_matches_keras_conv2d(strides):
    layer = _built(strides)
    reference = keras.layers.Conv2D(4, 3, strides=strides, padding="same")
    reference.build((None, 5, 5, 2))
    reference.set_weights(layer.get_weights())
    x = _inputs()
    got = layer(x)
    np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-5)
    assert tuple(got.shape) == layer.compute_output_shape(x.shape)


def test_strided_output_is_ceil_half():
    assert _built(2)(_inputs()).shape == (2, 3, 3, 4)


def test_fast_weights_replace_the_variables():
    layer = _built()
    x = _inputs()
    params = {
        "kernel": tf.zeros_like(layer.kernel),
        "bias": tf.constant([1.0, 2.0, 3.0, 4.0]),
    }
    got = layer(x, params=params)
    np.testing.assert_allclose(
        got, np.broadcast_to([1.0, 2.0, 3.0, 4.0], (2, 5, 5, 4))
    )


def test_gradients_reach_fast_weights_not_variables():
    layer = _built()
    params = {
        "kernel": tf.convert_to_tensor(layer.kernel),
        "bias": tf.convert_to_tensor(layer.bias),
    }
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(list(params.values()))
        loss = tf.reduce_sum(tf.square(layer(_inputs(), params=params)))
    grads = tape.gradient(loss, params)
    assert all(np.any(g.numpy() != 0) for g in grads.values())
    assert tape.gradient(loss, layer.kernel) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strides": 0}, "strides must be an int >= 1, got 0"),
        ({"kernel_size": 2.5}, "kernel_size must be an int >= 1, got 2.5"),
        ({"padding": "causal"}, "padding must be one of"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaConv2D(4, **kwargs)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel_size, strides", [(1, 1), (3, 3), (2, 2)])
def test_matches_keras_conv2d_without_bias(padding, kernel_size, strides):
    layer = MetaConv2D(4, kernel_size=kernel_size, strides=strides,
                       padding=padding, use_bias=False, activation="relu")
    x = tf.random.normal([2, 7, 7, 3])
    got = layer(x)
    reference = keras.layers.Conv2D(4, kernel_size, strides=strides,
                                    padding=padding, use_bias=False,
                                    activation="relu")
    reference.build(x.shape)
    reference.kernel.assign(layer.kernel)
    np.testing.assert_allclose(got, reference(x), atol=1e-5)
    assert got.shape == layer.compute_output_shape(x.shape)
    assert [w.name for w in layer.trainable_weights] == ["kernel"]


def _call(layer, x):
    return layer(x)


def test_traces_once_under_tf_function():
    conformance.assert_traces_once(_built(), _call, _inputs())


def test_get_config_round_trips():
    layer = MetaConv2D(4, kernel_size=5, strides=2, matmul_dtype="bfloat16")
    layer.build((None, 5, 5, 2))
    clone = conformance.assert_config_round_trips(layer, _call, _inputs())
    assert (clone.filters, clone.kernel_size, clone.strides) == (4, 5, 2)
    assert clone.matmul_dtype == "bfloat16"


def test_bfloat16_matmuls_keep_the_layer_dtype_and_stay_close():
    layer = _built()
    mixed = MetaConv2D(4, matmul_dtype="bfloat16")
    mixed.build((None, 5, 5, 2))
    mixed.set_weights(layer.get_weights())
    x = _inputs()
    got = mixed(x)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got, layer(x), rtol=0.05, atol=0.05)
    assert not np.array_equal(got, layer(x))  # It did run in bfloat16.


def test_saved_model_gives_the_same_outputs(tmp_path):
    conformance.assert_saved_model_matches(_built(), _call, _inputs(), tmp_path)
