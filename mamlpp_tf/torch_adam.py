"""Adam with PyTorch's update: the authors' meta-optimizer, exactly.

The authors meta-train with `torch.optim.Adam` (Antoniou et al. 2019, and
their few_shot_learning_system.py). With m, v the moment estimates after t
steps, PyTorch adds epsilon to the bias-corrected root:

    theta -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

while `keras.optimizers.Adam` adds it to the uncorrected one:

    theta -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

that is, Keras puts eps / sqrt(1 - b2^t) where PyTorch puts eps: a larger
epsilon, most of all in the first steps (b2 = 0.999: sqrt(1 - b2) = 0.0316
at t = 1), tending to eps as t grows. The two updates differ where the
corrected root sqrt(v / (1 - b2^t)) is not much larger than that epsilon:
gradients of order 1e-8 and below, such as those of the conv biases that
batch norm cancels.
"""

from __future__ import annotations

import keras
from keras import ops

# PyTorch's default Adam epsilon (the authors keep it); Keras's is 1e-7.
TORCH_ADAM_EPSILON = 1e-8


class TorchAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` with PyTorch's placement of epsilon.

    Same arguments (but no `amsgrad`), same state (`iterations`, one first
    and one second moment per variable, under the same names), so
    checkpoints of either restore into the other; only the update differs
    (module docstring).
    """

    def __init__(self, *args, epsilon: float = TORCH_ADAM_EPSILON, **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError(
                "TorchAdam does not implement amsgrad (the authors train "
                "with amsgrad=False); use keras.optimizers.Adam for it."
            )
        super().__init__(*args, epsilon=epsilon, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        """One PyTorch Adam step of `variable` along `gradient`."""
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        bias_correction_1 = 1 - ops.power(beta_1, step)
        bias_correction_2 = 1 - ops.power(beta_2, step)

        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign_add(
            v,
            ops.multiply(ops.subtract(ops.square(gradient), v), 1 - beta_2),
        )
        denominator = ops.add(
            ops.divide(ops.sqrt(v), ops.sqrt(bias_correction_2)),
            ops.cast(self.epsilon, dtype),
        )
        step_size = ops.divide(lr, bias_correction_1)
        self.assign_sub(
            variable, ops.divide(ops.multiply(m, step_size), denominator)
        )
