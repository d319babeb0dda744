"""FewShotClassifier: the conv backbone on explicit params and BN slots."""

import conformance
import keras
import numpy as np
import pytest
import tensorflow as tf

import mamlpp_tf
from mamlpp_tf import model as model_lib

IMAGE_SHAPE = (8, 8, 1)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _config(**overrides):
    values = {
        "num_ways": 2,
        "num_shots": 1,
        "num_queries": 1,
        "meta_batch_size": 1,
        "image_shape": IMAGE_SHAPE,
        "num_filters": 3,
        "num_stages": 2,
        "num_inner_steps": 2,
        "num_eval_inner_steps": 2,
    }
    values.update(overrides)
    return mamlpp_tf.mamlpp(**values)


def _images(n=4, shape=IMAGE_SHAPE, dtype="float32"):
    return tf.random.normal([n, *shape], dtype=dtype)


def _as_tensors(model):
    return {
        n: tf.convert_to_tensor(v) for n, v in model.named_variables().items()
    }


def _randomise_bn(model):
    """Distinct, non-trivial BN weights per slot, so slot mix-ups show."""
    for norm in model.norms:
        norm.gamma.assign(tf.random.uniform(norm.gamma.shape, 0.5, 1.5))
        norm.beta.assign(tf.random.normal(norm.beta.shape))
        norm.moving_mean.assign(tf.random.normal(norm.moving_mean.shape))
        norm.moving_variance.assign(
            tf.random.uniform(norm.moving_variance.shape, 0.5, 2.0)
        )


def test_logits_shape_and_dtype():
    model = model_lib.build_classifier(_config(dtype="float64"))
    logits = model(_images(dtype="float64"), step=1, training=True)
    assert logits.shape == (4, 2)
    assert logits.dtype == tf.float64
    assert all(v.dtype == "float64" for v in model.variables)


def test_param_names_list_every_trainable_weight_in_order():
    model = model_lib.build_classifier(_config())
    names = model.param_names()
    assert names == list(model.named_variables())
    assert names == [
        "conv0/kernel",
        "conv0/bias",
        "conv1/kernel",
        "conv1/bias",
        "norm0/gamma",
        "norm0/beta",
        "norm1/gamma",
        "norm1/beta",
        "dense/kernel",
        "dense/bias",
    ]
    assert len(names) == len(model.trainable_weights)


def test_adapted_param_names_include_bn_only_when_asked():
    model = model_lib.build_classifier(_config())
    plain = model.adapted_param_names(adapt_bn=False)
    assert plain == [
        "conv0/kernel",
        "conv0/bias",
        "conv1/kernel",
        "conv1/bias",
        "dense/kernel",
        "dense/bias",
    ]
    with_bn = model.adapted_param_names(adapt_bn=True)
    assert set(with_bn) == set(model.param_names())


@pytest.mark.parametrize(
    "bnwb,bnrs,weight_rows,statistics_rows",
    [
        (True, True, 2, 2),
        (False, True, 1, 2),
        (True, False, 2, 1),
        (False, False, 1, 1),
    ],
)
def test_bn_slots_follow_bnwb_and_bnrs(
    bnwb, bnrs, weight_rows, statistics_rows
):
    model = model_lib.build_classifier(
        _config(per_step_bn_weights=bnwb, per_step_bn_statistics=bnrs)
    )
    for norm in model.norms:
        assert norm.gamma.shape == (weight_rows, 3)
        assert norm.beta.shape == (weight_rows, 3)
        assert norm.moving_mean.shape == (statistics_rows, 3)
        assert norm.moving_variance.shape == (statistics_rows, 3)


def test_matches_a_keras_reference_network():
    # The authors' VGGReLUNormNetwork: conv3x3 -> BN (batch statistics) ->
    # LeakyReLU(0.01) -> max-pool 2x2, twice, then flatten -> dense.
    model = model_lib.build_classifier(_config(per_step_bn_weights=False))
    _randomise_bn(model)
    layers = []
    for _ in range(2):
        layers += [
            keras.layers.Conv2D(3, 3, padding="same"),
            keras.layers.BatchNormalization(epsilon=1e-5),
            keras.layers.LeakyReLU(negative_slope=0.01),
            keras.layers.MaxPooling2D(2),
        ]
    reference = keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE),
            *layers,
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    named = model.named_variables()
    for i in range(2):
        conv, norm = reference.layers[4 * i], reference.layers[4 * i + 1]
        conv.set_weights([named[f"conv{i}/kernel"], named[f"conv{i}/bias"]])
        norm.set_weights(
            [
                named[f"norm{i}/gamma"].numpy()[0],
                named[f"norm{i}/beta"].numpy()[0],
                np.zeros(3),
                np.ones(3),
            ]
        )
    reference.layers[-1].set_weights(
        [named["dense/kernel"], named["dense/bias"]]
    )
    x = _images()
    np.testing.assert_allclose(
        model(x, step=0, training=True),
        reference(x, training=True),
        rtol=1e-4,
        atol=1e-5,
    )


def test_strided_variant_pools_globally():
    model = model_lib.build_classifier(
        _config(downsampling="strided", image_shape=(5, 5, 2))
    )
    assert [c.strides for c in model.convs] == [2, 2]
    assert model.classifier.kernel.shape == (3, 2)  # [filters, ways]
    assert model(_images(shape=(5, 5, 2)), step=0).shape == (4, 2)


def test_own_variables_equal_the_same_values_as_params():
    model = model_lib.build_classifier(_config())
    _randomise_bn(model)
    x = _images()
    for training in (True, False):
        np.testing.assert_allclose(
            model(x, step=1, training=training),
            model(x, step=1, params=_as_tensors(model), training=training),
            rtol=1e-6,
        )


def test_fast_weights_replace_the_variables():
    model = model_lib.build_classifier(_config())
    x = _images()
    params = _as_tensors(model)
    params["dense/bias"] = params["dense/bias"] + tf.constant([1.0, -2.0])
    np.testing.assert_allclose(
        model(x, step=0, params=params, training=True),
        model(x, step=0, training=True) + [1.0, -2.0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_step_selects_the_bn_slot():
    model = model_lib.build_classifier(_config())
    _randomise_bn(model)
    x = _images()
    step0 = model(x, step=0, training=True)
    step1 = model(x, step=1, training=True)
    assert not np.allclose(step0, step1)
    # Steps past the trained ones reuse the last slot.
    np.testing.assert_allclose(model(x, step=3, training=True), step1)
    for norm in model.norms:  # Make slot 1 equal slot 0: outputs agree.
        norm.gamma.assign(tf.tile(norm.gamma[:1], [2, 1]))
        norm.beta.assign(tf.tile(norm.beta[:1], [2, 1]))
    np.testing.assert_allclose(
        model(x, step=1, training=True),
        model(x, step=0, training=True),
        rtol=1e-6,
    )


def test_forward_returns_the_batch_moments_of_each_stage():
    model = model_lib.build_classifier(_config())
    x = _images()
    _, moments = model.forward(x, step=0, training=True)
    assert len(moments) == 2
    conv0 = model.convs[0](x).numpy()
    np.testing.assert_allclose(
        moments[0][0], conv0.mean((0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        moments[0][1], conv0.var((0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    assert moments[1][0].shape == (3,)


def test_running_mode_evaluation_uses_running_statistics():
    model = model_lib.build_classifier(_config(bn_mode="per_step_running"))
    _randomise_bn(model)
    x = _images()
    _, moments = model.forward(x, step=1, training=False)
    assert moments == [None, None]
    before = model(x, step=1, training=False).numpy()
    model.norms[0].moving_mean.assign_add(tf.ones([2, 3]))
    assert not np.allclose(model(x, step=1, training=False), before)


def test_transductive_mode_ignores_running_statistics():
    model = model_lib.build_classifier(_config(bn_mode="transductive"))
    x = _images()
    before = model(x, step=1, training=False).numpy()
    _randomise_bn(model)
    for norm in model.norms:
        norm.gamma.assign(tf.ones_like(norm.gamma))
        norm.beta.assign(tf.zeros_like(norm.beta))
    np.testing.assert_allclose(
        model(x, step=1, training=False), before, rtol=1e-6
    )


def _call_eval(model, x):
    return model(x, step=1, training=False)


def _running_model():
    model = model_lib.build_classifier(_config(bn_mode="per_step_running"))
    _randomise_bn(model)
    return model


def test_traces_once_under_tf_function():
    conformance.assert_traces_once(_running_model(), _call_eval, _images())


def test_get_config_round_trips():
    model = model_lib.FewShotClassifier(
        num_ways=3,
        num_filters=2,
        num_stages=1,
        downsampling="strided",
        num_weight_slots=2,
        num_statistics_slots=3,
        use_running_statistics=True,
        bn_momentum=0.2,
        bn_epsilon=1e-3,
        matmul_dtype="bfloat16",
    )
    model(_images(), step=0)
    clone = conformance.assert_config_round_trips(model, _call_eval, _images())
    assert clone.norms[0].gamma.shape == (2, 2)
    assert clone.norms[0].moving_mean.shape == (3, 2)
    assert (clone.norms[0].momentum, clone.norms[0].epsilon) == (0.2, 1e-3)
    assert clone.convs[0].strides == 2
    assert clone.convs[0].matmul_dtype == "bfloat16"
    assert clone.classifier.matmul_dtype == "bfloat16"


def test_saved_model_gives_the_same_outputs(tmp_path):
    conformance.assert_saved_model_matches(
        _running_model(), _call_eval, _images(), tmp_path
    )
