"""ResNet-12: its layout, and second-order meta-gradients through it.

A narrow ResNet-12 (widths 2-3-3-2, 16x16 images, the fewest pixels that
four 2x2 max-pools leave at 1x1) keeps float64 finite differences fast.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mamlpp_tf
from helpers import finite_differences
from mamlpp_tf import resnet

SHAPE = (16, 16, 2)
WIDTHS = (2, 3, 3, 2)


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
        "backbone": "resnet12",
        "resnet_widths": WIDTHS,
        "num_inner_steps": 2,
        "num_eval_inner_steps": 2,
        "first_order_to_second_order_epoch": -1,
        "msl_epochs": 3,
        "dtype": "float64",
    }
    values.update(overrides)
    return mamlpp_tf.mamlpp(**values)


def _batch(config, tasks=2, seed=0):
    rng = np.random.default_rng(seed)
    n = config.num_ways

    def labels(per_class):
        return tf.constant(np.stack([np.repeat(rng.permutation(n), per_class)
                                     for _ in range(tasks)]).astype(np.int32))

    def images(per_class):
        return tf.constant(rng.normal(size=(tasks, n * per_class, *SHAPE))
                           .astype(config.dtype))

    return {"support_x": images(config.num_shots),
            "support_y": labels(config.num_shots),
            "query_x": images(config.num_queries),
            "query_y": labels(config.num_queries)}


def test_four_blocks_of_three_convs_and_a_shortcut():
    learner = mamlpp_tf.MetaLearner(_config())
    kernels = {n: v.shape for n, v in learner.model.named_variables().items()
               if n.endswith("/kernel")}
    # Block b: 3x3 convs in -> w -> w -> w, a 1x1 shortcut in -> w.
    expected = {}
    channels = SHAPE[-1]
    for b, width in enumerate(WIDTHS):
        expected[f"block{b}_conv0/kernel"] = (3, 3, channels, width)
        expected[f"block{b}_conv1/kernel"] = (3, 3, width, width)
        expected[f"block{b}_conv2/kernel"] = (3, 3, width, width)
        expected[f"block{b}_shortcut_conv/kernel"] = (1, 1, channels, width)
        channels = width
    expected["classifier/kernel"] = (WIDTHS[-1], 2)  # After global pooling.
    assert kernels == expected
    # No conv bias (BN follows each conv); 16 BN layers; a classifier bias.
    assert not any(n.startswith("block") and n.endswith("/bias")
                   for n in learner.network_names)
    assert len(learner.norm_layers) == 16
    # 2 support images: 16x16 in block 0, halved by each block's max-pool.
    assert learner.moment_counts == [2 * s * s for s in (16, 8, 4, 2)
                                     for _ in range(4)]


def test_widths_default_to_64_160_320_640():
    network = resnet.resnet12_network(mamlpp_tf.MetaLearnerConfig(
        backbone="resnet12", image_shape=(16, 16, 3)))
    widths = [network.get_layer(f"block{b}_conv2").filters for b in range(4)]
    assert widths == [64, 160, 320, 640]
    assert network.get_layer("block0_conv0").kernel_size == 3


def test_logits_follow_a_keras_resnet12_with_the_same_weights():
    """The same blocks written with keras.layers and batch statistics."""
    config = _config(dtype="float32")
    model = mamlpp_tf.build_resnet12(config)
    named = model.named_variables()
    x = tf.random.normal([4, *SHAPE])

    def conv(h, name):
        return tf.nn.conv2d(h, named[f"{name}/kernel"], 1, "SAME")

    def norm(h, name):
        mean, var = tf.nn.moments(h, [0, 1, 2])
        return ((h - mean) / tf.sqrt(var + config.bn_epsilon)
                * named[f"{name}/gamma"][0] + named[f"{name}/beta"][0])

    relu = keras.layers.LeakyReLU(negative_slope=0.1)
    h = x
    for b in range(4):
        s = norm(conv(h, f"block{b}_shortcut_conv"), f"block{b}_shortcut_norm")
        for i in range(3):
            h = norm(conv(h, f"block{b}_conv{i}"), f"block{b}_norm{i}")
            h = relu(h) if i < 2 else h
        h = keras.layers.MaxPooling2D(2)(relu(h + s))
    expected = (tf.reduce_mean(h, [1, 2]) @ named["classifier/kernel"]
                + named["classifier/bias"])
    got, _ = model.forward(x, step=0, training=True)
    # float32 through 13 convs: rounding of about 1e-6 relative.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"adapt_bn_in_inner_loop": True, "bn_mode": "per_step_running",
          "multi_step_loss": False}],
    ids=["mamlpp", "adapt_bn_running"],
)
def test_second_order_meta_gradient_matches_finite_differences(overrides):
    """Every variable, network and LSLR: the directional derivative along a
    random direction against central differences.

    The meta-loss is only piecewise smooth: where a max-pool's argmax or a
    ReLU's sign flips, the inner gradients jump, and so does the loss after
    the inner steps; a step of 1e-5 crosses such a flip in a ResNet-12 of
    16x16 images, 1e-7 does not. float64 rounding then costs about
    1e-16 * |loss| / delta = 1e-9, truncation O(delta^2) nothing: both far
    inside the tolerance."""
    config = _config(**overrides)
    learner = mamlpp_tf.MetaLearner(config)
    # Per-step BN weights and LSLR rates off their initial values, so a
    # slot or rate mix-up changes the loss.
    rng = np.random.default_rng(2)
    for variable in learner.trainable_variables:
        variable.assign(variable.numpy()
                        + 0.1 * rng.normal(size=variable.shape))
    batch = _batch(config)
    _, grads = learner.compute_meta_gradients(batch, epoch=0)
    finite_differences.assert_meta_gradients_match(learner, batch, grads,
                                                   rng)


def test_train_step_moves_weights_rates_and_every_bn_slot():
    config = _config(dtype="float32")
    learner = mamlpp_tf.MetaLearner(config)
    before = [v.numpy().copy() for v in learner.trainable_variables]
    stats = [n.moving_mean.numpy().copy() for n in learner.norm_layers]
    metrics = learner.train_step(_batch(config), epoch=0)
    assert metrics["applied"]
    moved = [not np.allclose(a, v.numpy())
             for a, v in zip(before, learner.trainable_variables, strict=True)]
    assert all(moved)
    for norm, start in zip(learner.norm_layers, stats, strict=True):
        # Both BNRS slots moved (one per inner step).
        assert not np.allclose(norm.moving_mean.numpy()[0], start[0])
        assert not np.allclose(norm.moving_mean.numpy()[1], start[1])


# Two of the four combinations on this network (each float64 pair costs
# CI time); the toy inner-loop tests run all four against closed forms.
@pytest.mark.parametrize("msl, second_order", [(True, True), (False, False)],
                         ids=["msl_second_order", "final_step_first_order"])
def test_separate_query_backward_gives_the_tapes_meta_gradients(
    msl, second_order,
):
    """Each query loss differentiated on its own tape and pulled back
    through the inner loop is the chain rule the outer tape applies, in
    another order: float64 rounding apart, the same meta-gradients."""
    config = _config(multi_step_loss=msl, second_order=second_order)
    through_tape = mamlpp_tf.MetaLearner(config,
                                         separate_query_backward=False)
    separate = mamlpp_tf.MetaLearner(config, separate_query_backward=True)
    for source, target in zip(through_tape.trainable_variables,
                              separate.trainable_variables, strict=True):
        target.assign(source)
    batch = _batch(config)
    loss_a, grads_a = through_tape.compute_meta_gradients(batch, epoch=0)
    loss_b, grads_b = separate.compute_meta_gradients(batch, epoch=0)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-12)
    moved = 0
    for name, a, b in zip(through_tape.trainable_variable_names, grads_a,
                          grads_b, strict=True):
        # Sums of a few thousand float64 terms in another order.
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12,
                                   err_msg=name)
        moved += bool(np.any(a != 0))
    # Every tensor the query losses reach has a gradient (a pull-back that
    # dropped them would agree with a zero reference).
    assert moved == len(grads_a)