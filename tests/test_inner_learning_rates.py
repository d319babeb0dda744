"""InnerLearningRates (LSLR): one learnable rate per tensor per step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mamlpp_tf.layers import InnerLearningRates

NAMES = ["conv0/kernel", "conv0/bias", "dense/kernel"]


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _rates():
    layer = InnerLearningRates(NAMES, num_steps=3, init_lr=0.1)
    for i, name in enumerate(NAMES):  # Distinct values expose mix-ups.
        layer.rates[name].assign([0.1 + i, 0.2 + i, 0.3 + i])
    return layer


def test_rates_start_at_init_lr_one_per_step():
    layer = InnerLearningRates(NAMES, num_steps=4, init_lr=0.05)
    assert list(layer.rates) == NAMES
    for name in NAMES:
        np.testing.assert_allclose(layer.rates[name], [0.05] * 4)
    assert len(layer.trainable_weights) == len(NAMES)


def test_weight_names_hold_no_slash():
    layer = InnerLearningRates(NAMES, num_steps=2, init_lr=0.1)
    assert [w.name for w in layer.trainable_weights] == [
        "conv0-kernel",
        "conv0-bias",
        "dense-kernel",
    ]


@pytest.mark.parametrize(
    "step,expected", [(0, 1.1), (1, 1.2), (2, 1.3), (5, 1.3)]
)
def test_rate_of_a_step_reuses_the_last_past_the_trained_steps(step, expected):
    np.testing.assert_allclose(
        _rates().rate("conv0/bias", step), expected, rtol=1e-6
    )


def test_rate_reads_given_tensors_instead_of_the_variables():
    layer = _rates()
    given = {name: tf.constant([7.0, 8.0, 9.0]) for name in NAMES}
    np.testing.assert_allclose(layer.rate("dense/kernel", 1, given), 8.0)


def test_dtype_follows_the_layer():
    layer = InnerLearningRates(NAMES, num_steps=2, init_lr=0.1, dtype="float64")
    assert layer.rate("conv0/kernel", 0).dtype == tf.float64


def test_traces_once_under_tf_function():
    layer = _rates()
    fn = tf.function(lambda scale: scale * layer.rate("conv0/kernel", 1))
    fn(tf.constant(1.0))
    layer.rates["conv0/kernel"].assign([1.0, 5.0, 1.0])
    np.testing.assert_allclose(fn(tf.constant(2.0)), 10.0)  # Reads the var.
    assert fn.experimental_get_tracing_count() == 1


def test_get_config_round_trips():
    layer = InnerLearningRates(NAMES, num_steps=3, init_lr=0.25)
    config = layer.get_config()
    clone = InnerLearningRates.from_config(config)
    assert clone.get_config() == config
    assert clone.param_names == tuple(NAMES) and clone.num_steps == 3
    np.testing.assert_allclose(clone.rates["dense/kernel"], [0.25] * 3)


def test_saved_model_gives_the_same_rates(tmp_path):
    layer = _rates()
    module = tf.Module()
    module.layer = layer
    module.rates = tf.function(
        lambda: tf.stack([layer.rate(n, 2) for n in NAMES]),
        input_signature=[],
    )
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(loaded.rates(), [0.3, 1.3, 2.3], rtol=1e-6)
