"""TorchAdam: PyTorch's Adam update, Keras's Adam state."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mamlpp_tf
from mamlpp_tf import torch_adam

# Round numbers that make epsilon matter: lr 0.1, b1 0.5, b2 0.75, eps 0.25.
HYPER = {"learning_rate": 0.1, "beta_1": 0.5, "beta_2": 0.75, "epsilon": 0.25}
GRADIENTS = (1.0, 2.5)


def _two_steps(optimizer):
    """x after each of two steps from x = 1 along GRADIENTS; (m, v)."""
    x = keras.Variable(np.float64(1.0), dtype="float64")
    optimizer.build([x])
    values = []
    for g in GRADIENTS:
        optimizer.apply([tf.constant(g, tf.float64)], [x])
        values.append(float(x.numpy()))
    m, v = optimizer._momentums[0], optimizer._velocities[0]
    return values, (float(m.numpy()), float(v.numpy()))


def test_two_steps_match_pytorchs_update_worked_by_hand():
    # PyTorch: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    # x -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps).
    # t=1, g=1:   m = 0.5, v = 0.25; m/(1-0.5) = 1, v/(1-0.75) = 1:
    #             x = 1 - 0.1 * 1 / (1 + 0.25) = 0.92.
    # t=2, g=2.5: m = 0.25 + 1.25 = 1.5, v = 0.1875 + 1.5625 = 1.75;
    #             m/(1-0.25) = 2, v/(1-0.5625) = 4, sqrt = 2:
    #             x = 0.92 - 0.1 * 2 / (2 + 0.25) = 0.831111...
    values, (m, v) = _two_steps(torch_adam.TorchAdam(**HYPER))
    # Keras keeps the learning rate in float32: 0.1 to 1.5e-9 relative.
    np.testing.assert_allclose(values, [0.92, 0.8311111111111111], rtol=1e-8)
    np.testing.assert_allclose([m, v], [1.5, 1.75], rtol=1e-12)


def test_keras_adam_puts_epsilon_elsewhere():
    # Keras: x -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps).
    # t=1: 0.1 * 0.5 / 0.5 * 0.5 / (0.5 + 0.25) = 0.0666..., x = 0.933333;
    # the test above would fail on it.
    values, _ = _two_steps(keras.optimizers.Adam(**HYPER))
    np.testing.assert_allclose(values[0], 0.9333333333333333, rtol=1e-8)


def test_default_epsilon_is_pytorchs():
    assert torch_adam.TorchAdam().epsilon == 1e-8


def test_amsgrad_is_refused():
    with pytest.raises(ValueError, match="does not implement amsgrad"):
        torch_adam.TorchAdam(amsgrad=True)


@pytest.mark.parametrize(
    "save_with,restore_into",
    [
        (keras.optimizers.Adam, torch_adam.TorchAdam),
        (torch_adam.TorchAdam, torch_adam.TorchAdam),
    ],
)
def test_checkpoints_restore_across_keras_adam_and_torch_adam(
    tmp_path, save_with, restore_into
):
    # A run checkpointed before the switch resumes with the same state.
    x = keras.Variable(np.array([1.0, -2.0], np.float32))
    saved = save_with(learning_rate=0.01)
    saved.build([x])
    for g in ([0.3, -0.1], [0.2, 0.4], [-0.5, 0.1]):
        saved.apply([tf.constant(g)], [x])
    path = tf.train.Checkpoint(optimizer=saved, x=x).save(tmp_path / "ckpt")

    y = keras.Variable(np.zeros(2, np.float32))
    restored = restore_into(learning_rate=0.01)
    restored.build([y])
    tf.train.Checkpoint(optimizer=restored, x=y).restore(path).assert_consumed()
    assert int(restored.iterations.numpy()) == 3
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    for a, b in zip(saved.variables, restored.variables, strict=True):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.path)


def test_the_meta_learner_uses_it():
    config = mamlpp_tf.mamlpp(
        num_ways=2,
        num_shots=1,
        num_queries=1,
        meta_batch_size=1,
        image_shape=(4, 4, 1),
        num_filters=2,
        num_stages=1,
        num_inner_steps=1,
        num_eval_inner_steps=1,
        msl_epochs=1,
        first_order_to_second_order_epoch=-1,
    )
    learner = mamlpp_tf.MetaLearner(config)
    assert isinstance(learner.optimizer, torch_adam.TorchAdam)
    assert learner.optimizer.epsilon == 1e-8
