"""Pure schedules: MSL weights, cosine meta lr, derivative order (DA)."""

import numpy as np
import pytest

import mamlpp_tf
from mamlpp_tf import schedules

MSL_GOLDEN = [
    # (num_steps, msl_epochs, epoch, weights): the authors' formula by hand.
    (5, 10, 0, [0.2, 0.2, 0.2, 0.2, 0.2]),
    (5, 10, 1, [0.18, 0.18, 0.18, 0.18, 0.28]),
    (5, 10, 5, [0.10, 0.10, 0.10, 0.10, 0.60]),
    (5, 10, 9, [0.02, 0.02, 0.02, 0.02, 0.92]),
    (5, 15, 14, [0.2 / 15] * 4 + [1 - 0.8 / 15]),
    # Past the annealing: non-final steps sit at the floor 0.03 / N.
    (5, 10, 10, [0.006] * 4 + [0.976]),
    (5, 10, 50, [0.006] * 4 + [0.976]),
    (2, 4, 1, [0.375, 0.625]),
    (1, 10, 3, [1.0]),
]


@pytest.mark.parametrize("num_steps,msl_epochs,epoch,expected", MSL_GOLDEN)
def test_msl_weights_match_golden_values(
    num_steps, msl_epochs, epoch, expected
):
    weights = mamlpp_tf.msl_weights(num_steps, epoch, msl_epochs)
    assert weights.dtype == np.float32
    assert weights.shape == (num_steps,)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("epoch", [0, 1, 2, 7, 13, 30])
def test_msl_weights_sum_to_one_and_favour_the_final_step(epoch):
    weights = mamlpp_tf.msl_weights(5, epoch, 10)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    assert np.all(weights[:-1] == weights[0])
    assert weights[-1] >= weights[0]
    assert weights[0] >= schedules.MSL_FLOOR / 5 - 1e-9


@pytest.mark.parametrize("args", [(0, 0, 10), (5, -1, 10), (5, 0, 0)])
def test_msl_weights_rejects_impossible_arguments(args):
    with pytest.raises(ValueError, match="msl_weights needs"):
        mamlpp_tf.msl_weights(*args)


@pytest.mark.parametrize(
    "epoch,expected",
    [
        (0, 1e-3),
        (50, 5.05e-4),
        (99, 1.0244e-5),
        (100, 1e-5),
    ],
)
def test_cosine_lr_matches_golden_values(epoch, expected):
    lr = mamlpp_tf.cosine_lr(epoch, 100, 1e-3, 1e-5)
    np.testing.assert_allclose(lr, expected, rtol=1e-4)


@pytest.mark.parametrize(
    "epoch,expected",
    [
        # min + (max - min) (1 + cos(pi e / T)) / 2 with max 1e-2, min 2e-5,
        # T = 30, so max - min = 0.00998, at angles whose cosine is exact:
        (0, 1e-2),  # cos 0 = 1: the maximum.
        # cos(pi/6) = sqrt(3)/2: 2e-5 + 0.00998 * 0.9330127.
        (5, 0.0093314668),
        (10, 0.007505),  # cos(pi/3) = 1/2: 2e-5 + 0.00998 * 3/4.
        (15, 0.00501),  # cos(pi/2) = 0: halfway, 2e-5 + 0.00998 / 2.
        (20, 0.002515),  # cos(2pi/3) = -1/2: 2e-5 + 0.00998 / 4.
        (30, 2e-5),  # cos(pi) = -1: the minimum.
    ],
)
def test_cosine_lr_matches_values_worked_by_hand(epoch, expected):
    np.testing.assert_allclose(
        mamlpp_tf.cosine_lr(epoch, 30, 1e-2, 2e-5), expected, rtol=1e-7
    )


@pytest.mark.parametrize("args", [(0, 0, 1e-3, 1e-5), (-1, 10, 1e-3, 1e-5)])
def test_cosine_lr_rejects_impossible_arguments(args):
    with pytest.raises(ValueError, match="cosine_lr needs"):
        mamlpp_tf.cosine_lr(*args)


def test_meta_lr_follows_cosine_annealing_only_when_on():
    on = mamlpp_tf.mamlpp(meta_lr=1e-3, min_meta_lr=1e-5, total_epochs=100)
    assert schedules.meta_lr(on, 0) == pytest.approx(1e-3)
    assert schedules.meta_lr(on, 50) == pytest.approx(5.05e-4)
    off = mamlpp_tf.mamlpp(cosine_annealing=False, meta_lr=1e-3)
    assert [schedules.meta_lr(off, e) for e in (0, 50, 99)] == [1e-3] * 3


@pytest.mark.parametrize(
    "switch_epoch,second_order_epochs",
    [
        (-1, [0, 1, 2, 3]),  # -1: second order from epoch 0.
        (0, [1, 2, 3]),
        (2, [3]),  # First order while epoch <= 2 (the authors' convention).
        (50, []),
    ],
)
def test_use_second_order_switches_after_the_da_epoch(
    switch_epoch, second_order_epochs
):
    config = mamlpp_tf.mamlpp(first_order_to_second_order_epoch=switch_epoch)
    got = [e for e in range(4) if schedules.use_second_order(config, e)]
    assert got == second_order_epochs


def test_use_second_order_is_false_without_second_order():
    config = mamlpp_tf.first_order_maml(first_order_to_second_order_epoch=-1)
    assert not any(schedules.use_second_order(config, e) for e in range(5))


def test_step_loss_weights_are_msl_while_msl_is_active():
    config = mamlpp_tf.mamlpp(num_inner_steps=5, msl_epochs=10)
    np.testing.assert_allclose(
        schedules.step_loss_weights(config, 1, 5),
        [0.18, 0.18, 0.18, 0.18, 0.28],
        rtol=1e-5,
    )
    assert schedules.use_multi_step_loss(config, 9)
    assert not schedules.use_multi_step_loss(config, 10)


@pytest.mark.parametrize(
    "config,epoch,num_steps",
    [
        (
            mamlpp_tf.mamlpp(num_inner_steps=5, msl_epochs=10),
            10,
            5,
        ),  # Annealed.
        (
            mamlpp_tf.mamlpp(num_inner_steps=5, msl_epochs=10),
            3,
            7,
        ),  # Eval steps.
        (mamlpp_tf.maml(num_inner_steps=5), 0, 5),  # MSL off.
    ],
)
def test_step_loss_weights_are_final_step_only_otherwise(
    config, epoch, num_steps
):
    expected = np.zeros(num_steps, np.float32)
    expected[-1] = 1.0
    weights = schedules.step_loss_weights(config, epoch, num_steps)
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, expected)
