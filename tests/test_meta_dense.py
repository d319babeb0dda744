"""MetaDense: x @ kernel + bias on its variables or fast weights."""

import conformance
import keras
import numpy as np
import pytest
import tensorflow as tf

from mamlpp_tf.layers import MetaDense


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _inputs():
    return tf.random.normal([3, 6])


def _built():
    layer = MetaDense(2)
    layer.build((None, 6))
    layer.bias.assign([0.5, -1.0])
    return layer


def test_matches_the_affine_map():
    layer = _built()
    x = _inputs()
    expected = x.numpy() @ layer.kernel.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    assert layer.compute_output_shape(x.shape) == (3, 2)


def test_fast_weights_replace_the_variables():
    layer = _built()
    x = _inputs()
    kernel = tf.random.normal([6, 2])
    bias = tf.constant([3.0, 4.0])
    got = layer(x, params={"kernel": kernel, "bias": bias})
    np.testing.assert_allclose(
        got, x.numpy() @ kernel.numpy() + [3.0, 4.0], rtol=1e-5, atol=1e-6
    )


def _call(layer, x):
    return layer(x)


def test_traces_once_under_tf_function():
    conformance.assert_traces_once(_built(), _call, _inputs())


def test_get_config_round_trips():
    layer = MetaDense(2, matmul_dtype="bfloat16")
    layer.build((None, 6))
    clone = conformance.assert_config_round_trips(layer, _call, _inputs())
    assert (clone.units, clone.matmul_dtype) == (2, "bfloat16")


def test_bfloat16_matmul_keeps_the_layer_dtype_and_stays_close():
    layer = _built()
    mixed = MetaDense(2, matmul_dtype="bfloat16")
    mixed.build((None, 6))
    mixed.set_weights(layer.get_weights())
    x = _inputs()
    got = mixed(x)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got, layer(x), rtol=0.05, atol=0.05)
    assert not np.array_equal(got, layer(x))  # It did run in bfloat16.


def test_saved_model_gives_the_same_outputs(tmp_path):
    conformance.assert_saved_model_matches(_built(), _call, _inputs(), tmp_path)
