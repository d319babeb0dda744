"""Conformance checks shared by the layer and model tests (STYLE.md 6).

Each takes `call(layer, x)`, the call under test with its keyword arguments
(step, params, training) fixed, so one helper covers every layer.
"""

import numpy as np
import tensorflow as tf


def assert_traces_once(layer, call, x):
    """`call` runs under tf.function, matches eager and traces once."""
    fn = tf.function(lambda inputs: call(layer, inputs))
    eager = call(layer, x)
    np.testing.assert_allclose(fn(x), eager, rtol=1e-6, atol=1e-6)
    fn(x + 1.0)
    fn(x * 2.0)
    assert fn.experimental_get_tracing_count() == 1


def assert_config_round_trips(layer, call, x):
    """from_config(get_config()) rebuilds a layer that computes the same."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    call(clone, x)  # Builds it.
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        call(clone, x), call(layer, x), rtol=1e-6, atol=1e-6
    )
    return clone


def assert_saved_model_matches(layer, call, x, directory):
    """tf.saved_model save -> load of the call gives the same outputs."""
    module = tf.Module()
    module.layer = layer
    module.call = tf.function(
        lambda inputs: call(layer, inputs),
        input_signature=[tf.TensorSpec([None, *x.shape[1:]], x.dtype)],
    )
    expected = module.call(x).numpy()
    tf.saved_model.save(module, str(directory))
    loaded = tf.saved_model.load(str(directory))
    np.testing.assert_allclose(loaded.call(x), expected, rtol=1e-6, atol=1e-6)
