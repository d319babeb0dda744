"""to_meta_model: standard Keras layers -> meta-layers, or a clear refusal."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mamlpp_tf
from mamlpp_tf import backbone as backbone_lib
from mamlpp_tf import convert
from mamlpp_tf.layers import MetaConv2D, MetaDense, PerStepBatchNorm

SHAPE = (8, 8, 2)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _config(**overrides):
    values = {
        "num_ways": 2,
        "num_shots": 1,
        "num_queries": 1,
        "meta_batch_size": 2,
        "image_shape": SHAPE,
        "backbone": "custom",
        "num_inner_steps": 2,
        "num_eval_inner_steps": 2,
        "first_order_to_second_order_epoch": -1,
        "dtype": "float64",
    }
    values.update(overrides)
    return mamlpp_tf.mamlpp(**values)


def _keras_residual(dtype="float32"):
    """A residual block of standard Keras layers, functional."""
    eps = mamlpp_tf.MetaLearnerConfig().bn_epsilon
    inputs = keras.Input(SHAPE, dtype=dtype)
    x = keras.layers.Conv2D(3, 3, padding="same", dtype=dtype, name="c0")(
        inputs)
    x = keras.layers.BatchNormalization(epsilon=eps, dtype=dtype,
                                        name="n0")(x)
    x = keras.layers.LeakyReLU(0.1, dtype=dtype)(x)
    x = keras.layers.Conv2D(3, 3, padding="same", use_bias=False,
                            dtype=dtype, name="c1")(x)
    x = keras.layers.BatchNormalization(epsilon=eps, dtype=dtype,
                                        name="n1")(x)
    s = keras.layers.Conv2D(3, 1, use_bias=False, dtype=dtype, name="sc")(
        inputs)
    s = keras.layers.BatchNormalization(epsilon=eps, dtype=dtype,
                                        name="sn")(s)
    x = keras.layers.Add(dtype=dtype)([x, s])
    x = keras.layers.ReLU(dtype=dtype)(x)
    x = keras.layers.MaxPooling2D(2, dtype=dtype)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    logits = keras.layers.Dense(2, dtype=dtype, name="head")(x)
    return keras.Model(inputs, logits)


def _hand_built(config):
    """The same network as `_keras_residual`, from meta-layers."""
    dtype, bn = config.dtype, {**backbone_lib.bn_kwargs(config),
                               "dtype": config.dtype}
    inputs = keras.Input(SHAPE, dtype=dtype)
    x = MetaConv2D(3, dtype=dtype, name="c0")(inputs)
    x = PerStepBatchNorm(**bn, name="n0")(x)
    x = keras.layers.LeakyReLU(0.1, dtype=dtype)(x)
    x = MetaConv2D(3, use_bias=False, dtype=dtype, name="c1")(x)
    x = PerStepBatchNorm(**bn, name="n1")(x)
    s = MetaConv2D(3, 1, use_bias=False, dtype=dtype, name="sc")(inputs)
    s = PerStepBatchNorm(**bn, name="sn")(s)
    x = keras.layers.Add(dtype=dtype)([x, s])
    x = keras.layers.ReLU(dtype=dtype)(x)
    x = keras.layers.MaxPooling2D(2, dtype=dtype)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    logits = MetaDense(2, dtype=dtype, name="head")(x)
    return keras.Model(inputs, logits)


def _batch(config, tasks=2, seed=0):
    rng = np.random.default_rng(seed)
    n = config.num_ways

    def labels(per_class):
        return tf.constant(np.stack([np.repeat(rng.permutation(n), per_class)
                                     for _ in range(tasks)]).astype(np.int32))

    return {
        "support_x": tf.constant(rng.normal(size=(tasks, n, *SHAPE))),
        "support_y": labels(1),
        "query_x": tf.constant(rng.normal(size=(tasks, n, *SHAPE))),
        "query_y": labels(1),
    }


def test_functional_model_converts_to_meta_layers_with_its_weights():
    original = _keras_residual()
    meta = convert.to_meta_model(original, _config())
    kinds = {layer.name: type(layer) for layer in meta.network.layers}
    assert kinds["c0"] is MetaConv2D and kinds["head"] is MetaDense
    assert kinds["n0"] is PerStepBatchNorm
    assert sorted(meta.param_names()) == sorted([
        "c0/kernel", "c0/bias", "n0/gamma", "n0/beta", "c1/kernel",
        "n1/gamma", "n1/beta", "sc/kernel", "sn/gamma", "sn/beta",
        "head/kernel", "head/bias",
    ])
    np.testing.assert_array_equal(meta.network.get_layer("c1").kernel,
                                  original.get_layer("c1").kernel)


def test_converted_model_computes_what_the_original_computes():
    """Training mode: Keras' BN normalises with the batch statistics, as
    PerStepBatchNorm does in every training pass (same epsilon here)."""
    original = _keras_residual()
    for name in ("n0", "n1", "sn"):  # Non-trivial BN weights to copy.
        layer = original.get_layer(name)
        layer.gamma.assign(tf.random.uniform(layer.gamma.shape, 0.5, 1.5))
        layer.beta.assign(tf.random.normal(layer.beta.shape))
    meta = convert.to_meta_model(original, _config(dtype="float32"))
    x = tf.random.normal([4, *SHAPE])
    got, _ = meta.forward(x, step=1, training=True)
    # float32 rounding of a few hundred multiply-adds: about 1e-5.
    np.testing.assert_allclose(got, original(x, training=True), atol=1e-4)


def test_sequential_model_converts():
    original = keras.Sequential([
        keras.Input(SHAPE),
        keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.0),
        keras.layers.Dense(2),
    ])
    meta = convert.to_meta_model(original, _config())
    conv = meta.network.layers[0]
    assert (type(conv), conv.strides, conv.padding) == (MetaConv2D, 2, "valid")
    learner = mamlpp_tf.MetaLearner(_config(), backbone=meta)
    assert learner.moment_counts == [2 * 3 * 3]  # 8x8 -> 3x3 ("valid", 2).
    assert learner.train_step(_batch(_config()), epoch=0)["applied"]


def test_converted_model_gives_the_hand_built_meta_gradient():
    config = _config()
    converted = mamlpp_tf.MetaLearner(
        config, backbone=convert.to_meta_model(_keras_residual("float64"),
                                               config))
    by_hand = mamlpp_tf.MetaLearner(config, backbone=_hand_built)
    assert by_hand.trainable_variable_names == (
        converted.trainable_variable_names)
    for mine, theirs in zip(by_hand.trainable_variables,
                            converted.trainable_variables, strict=True):
        mine.assign(theirs)
    batch = _batch(config)
    loss_a, grads_a = converted.compute_meta_gradients(batch, epoch=0)
    loss_b, grads_b = by_hand.compute_meta_gradients(batch, epoch=0)
    # The same float64 graph, op for op.
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-12)
    for name, a, b in zip(by_hand.trainable_variable_names, grads_a, grads_b,
                          strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14,
                                   err_msg=name)


def _model_with(layer):
    inputs = keras.Input(SHAPE)
    x = layer(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


@pytest.mark.parametrize(
    "layer, message",
    [
        (keras.layers.DepthwiseConv2D(3, name="dw"),
         "'dw' \\(DepthwiseConv2D\\): it has weights and no meta version. "
         "Use a Conv2D instead"),
        (keras.layers.LayerNormalization(name="ln"),
         "'ln' \\(LayerNormalization\\).*Use a BatchNormalization"),
        (keras.layers.PReLU(name="pr"), "'pr'.*keras.layers.LeakyReLU"),
        (keras.layers.Conv2D(2, 3, dilation_rate=2, name="dil"),
         "'dil'.*dilated.*Use dilation_rate=1"),
        (keras.layers.Conv2D(2, (3, 1), name="rect"),
         "'rect'.*not square"),
        (keras.layers.Conv2D(2, 3, kernel_regularizer="l2", name="reg"),
         "'reg'.*kernel_regularizer"),
        (keras.layers.BatchNormalization(center=False, name="bn"),
         "'bn'.*center=True, scale=True"),
    ],
)
def test_unconvertible_layers_are_refused_by_name(layer, message):
    with pytest.raises(ValueError, match=message):
        convert.to_meta_model(_model_with(layer), _config())


def test_subclassed_and_unbuilt_models_are_refused():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed model"):
        convert.to_meta_model(Net(), _config())
    unbuilt = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        convert.to_meta_model(unbuilt, _config())
