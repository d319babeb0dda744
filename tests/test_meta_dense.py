"""MetaDense: x @ kernel + bias on its variables or fast weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import conformance
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
    np.testing.assert_allclose(got, x.numpy() @ kernel.numpy() + [3.0, 4.0],
                               rtol=1e-5, atol=1e-6)


def _call(layer, x):
    return layer(x)


def test_traces_once_under_tf_function():
    conformance.assert_traces_once(_built(), _call, _inputs())


def test_get_config_round_trips():
    clone = conformance.assert_config_round_trips(_built(), _call, _inputs())
    assert clone.units == 2


def test_saved_model_gives_the_same_outputs(tmp_path):
    conformance.assert_saved_model_matches(_built(), _call, _inputs(),
                                           tmp_path)
