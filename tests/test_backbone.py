"""The backbone contract: MetaModel over any Keras model of meta-layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mamlpp_tf
from helpers import finite_differences
from mamlpp_tf import backbone as backbone_lib
from mamlpp_tf.layers import MetaConv2D, MetaDense, PerStepBatchNorm

SHAPE = (6, 6, 1)


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


def _residual_network(config):
    """conv 3x3 stride 2 -> BN -> ReLU, plus a 1x1 stride-2 shortcut with
    its own BN, added; global average pooling; dense head."""
    dtype, bn = config.dtype, backbone_lib.bn_kwargs(config)
    inputs = keras.Input(config.image_shape, dtype=dtype)
    x = MetaConv2D(3, strides=2, dtype=dtype, name="conv")(inputs)
    x = PerStepBatchNorm(**bn, dtype=dtype, name="norm")(x)
    x = keras.layers.ReLU(dtype=dtype)(x)
    s = MetaConv2D(3, 1, strides=2, use_bias=False, dtype=dtype,
                   name="shortcut")(inputs)
    s = PerStepBatchNorm(**bn, dtype=dtype, name="shortcut_norm")(s)
    x = keras.layers.Add(dtype=dtype)([x, s])
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    logits = MetaDense(config.num_ways, dtype=dtype, name="head")(x)
    return keras.Model(inputs, logits)


def _batch(config, tasks=2, seed=0):
    rng = np.random.default_rng(seed)
    n = config.num_ways

    def images(per_class):
        return tf.constant(rng.normal(size=(tasks, n * per_class, *SHAPE)))

    def labels(per_class):
        return tf.constant(np.stack([np.repeat(rng.permutation(n), per_class)
                                     for _ in range(tasks)]).astype(np.int32))

    return {"support_x": images(config.num_shots),
            "support_y": labels(config.num_shots),
            "query_x": images(config.num_queries),
            "query_y": labels(config.num_queries)}


def test_reads_layers_slots_and_moments_from_the_model():
    config = _config()
    learner = mamlpp_tf.MetaLearner(config, backbone=_residual_network)
    # Call order (Keras runs the graph depth by depth).
    assert sorted(learner.network_names) == sorted([
        "conv/kernel", "conv/bias", "norm/gamma", "norm/beta",
        "shortcut/kernel", "shortcut_norm/gamma", "shortcut_norm/beta",
        "head/kernel", "head/bias",
    ])
    assert sorted(learner.adapted_names) == sorted([
        "conv/kernel", "conv/bias", "shortcut/kernel", "head/kernel",
        "head/bias",
    ])
    assert learner.rate_names == learner.adapted_names
    assert learner.network_names[-2:] == ["head/kernel", "head/bias"]
    norms = [n.name for n in learner.norm_layers]
    assert sorted(norms) == ["norm", "shortcut_norm"]
    assert norms == [n.split("/")[0] for n in learner.network_names
                     if n.endswith("/gamma")]
    assert [n.channels for n in learner.norm_layers] == [3, 3]
    # 2 support images (2-way 1-shot), 6x6 halved by stride 2 ("same"):
    # 2 * 3 * 3 elements per channel behind either layer's moments.
    assert learner.moment_counts == [18, 18]


def test_fast_weights_replace_the_variables():
    config = _config()
    model = backbone_lib.MetaModel(_residual_network(config))
    x = tf.random.normal([4, *SHAPE], dtype="float64")
    params = {n: tf.convert_to_tensor(v)
              for n, v in model.named_variables().items()}
    own, _ = model.forward(x, step=1, training=True)
    same, _ = model.forward(x, step=1, params=params, training=True)
    np.testing.assert_allclose(own, same)
    params["head/bias"] = params["head/bias"] + 1.0
    moved, moments = model.forward(x, step=1, params=params, training=True)
    np.testing.assert_allclose(moved, own + 1.0)
    assert len(moments) == 2 and moments[0][0].shape == (3,)


def test_step_selects_the_bn_slot():
    config = _config()
    model = backbone_lib.MetaModel(_residual_network(config))
    norm = model.norm_layers[0]
    norm.beta.assign([[0.0] * 3, [5.0] * 3])
    x = tf.random.normal([4, *SHAPE], dtype="float64")
    # The normalised batch has mean beta per channel; the second slot's
    # beta shifts the ReLU input by 5.
    _, moments0 = model.forward(x, step=0, training=True)
    _, moments1 = model.forward(x, step=1, training=True)
    np.testing.assert_allclose(moments0[0][0], moments1[0][0])
    out0 = model.forward(x, step=0, training=True)[0]
    out1 = model.forward(x, step=1, training=True)[0]
    assert not np.allclose(out0, out1)


def test_train_step_moves_slot_k_with_the_models_own_counts():
    config = _config(per_step_bn_statistics=True)
    learner = mamlpp_tf.MetaLearner(config, backbone=_residual_network)
    before = learner.norm_layers[1].moving_variance.numpy().copy()
    learner.train_step(_batch(config), epoch=0)
    after = learner.norm_layers[1].moving_variance.numpy()
    assert not np.allclose(after[0], before[0])
    assert not np.allclose(after[1], before[1])


def test_a_plain_layer_with_weights_is_refused_by_name():
    config = _config()
    inputs = keras.Input(SHAPE, dtype="float64")
    x = keras.layers.Flatten(dtype="float64")(inputs)
    x = keras.layers.Dense(2, dtype="float64", name="plain_head")(x)
    with pytest.raises(ValueError, match="'plain_head' \\(Dense\\) has "
                       "trainable weights but is not a meta-layer"):
        mamlpp_tf.MetaLearner(config, backbone=keras.Model(inputs, x))


def test_a_bn_layer_called_twice_is_refused():
    config = _config()
    dtype = "float64"
    norm = PerStepBatchNorm(**backbone_lib.bn_kwargs(config), dtype=dtype,
                            name="shared")
    inputs = keras.Input(SHAPE, dtype=dtype)
    x = norm(norm(inputs))
    x = keras.layers.Flatten(dtype=dtype)(x)
    x = MetaDense(2, dtype=dtype)(x)
    with pytest.raises(ValueError, match="'shared'.*called more than once"):
        backbone_lib.MetaModel(keras.Model(inputs, x))


def test_bn_slots_that_disagree_with_the_config_are_refused():
    config = _config()
    network = _residual_network(_config(per_step_bn_weights=False))
    with pytest.raises(ValueError, match="'norm' has .*num_weight_slots"):
        mamlpp_tf.MetaLearner(config, backbone=network)


def test_a_weight_of_another_dtype_is_refused():
    with pytest.raises(ValueError, match="is float32, the config's dtype is "
                       "float64"):
        mamlpp_tf.MetaLearner(
            _config(),
            backbone=lambda c: _residual_network(_config(dtype="float32")),
        )


def test_logits_of_the_wrong_width_are_refused():
    with pytest.raises(ValueError, match="expected \\(3, 3\\) \\(num_ways=3"):
        mamlpp_tf.MetaLearner(_config(num_ways=3),
                              backbone=_residual_network(_config()))


def test_custom_backbone_and_config_must_agree():
    with pytest.raises(ValueError, match="config.backbone is 'custom', "
                       "custom_backbone=None and backbone=None"):
        mamlpp_tf.MetaLearner(_config())
    with pytest.raises(ValueError, match="config.backbone is 'conv4'"):
        mamlpp_tf.MetaLearner(_config(backbone="conv4", image_shape=(16, 16, 1)),
                              backbone=_residual_network)
    with pytest.raises(ValueError, match="not both"):
        mamlpp_tf.MetaLearner(_config(custom_backbone="nets:build"),
                              backbone=_residual_network)


def test_custom_backbone_names_an_importable_constructor(tmp_path,
                                                         monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "import test_backbone\n"
        "def residual(config):\n"
        "    return test_backbone._residual_network(config)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = _config(custom_backbone="my_nets:residual")
    learner = mamlpp_tf.MetaLearner(config)
    assert [n.name for n in learner.norm_layers] == ["norm", "shortcut_norm"]
    with pytest.raises(ValueError, match="cannot import 'no_such_module'.*"
                       "PYTHONPATH"):
        mamlpp_tf.MetaLearner(_config(custom_backbone="no_such_module:f"))
    with pytest.raises(ValueError, match="'my_nets' has no function 'nope'"):
        mamlpp_tf.MetaLearner(_config(custom_backbone="my_nets:nope"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"backbone": "conv4", "image_shape": (16, 16, 1),
          "custom_backbone": "nets:build"},
         "custom_backbone='nets:build' needs backbone='custom'"),
        ({"custom_backbone": "nets.build"},
         "custom_backbone must be 'module:function'"),
    ],
)
def test_custom_backbone_is_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_second_order_meta_gradient_matches_finite_differences():
    """Every variable, network and LSLR: the directional derivative along a
    random direction against central differences.

    The meta-loss is only piecewise smooth: where a max-pool's argmax or a
    ReLU's sign flips, the inner gradients jump, and so does the loss after
    the inner steps; a step of 1e-5 crosses such a flip in a ResNet-12 of
    16x16 images, 1e-7 does not. float64 rounding then costs about
    1e-16 * |loss| / delta = 1e-9, truncation O(delta^2) nothing: both far
    inside the tolerance."""
    config = _config()
    learner = mamlpp_tf.MetaLearner(config, backbone=_residual_network)
    batch = _batch(config)
    _, grads = learner.compute_meta_gradients(batch, epoch=0)
    rng = np.random.default_rng(1)
    finite_differences.assert_meta_gradients_match(learner, batch, grads,
                                                   rng)
