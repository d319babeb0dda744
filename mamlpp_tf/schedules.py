"""Pure schedules of MAML++: MSL weights, cosine meta lr, derivative order.

Each is a function of the epoch and the config, never trainer state, so a
resumed run computes the same values as an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np

from mamlpp_tf import config as config_lib

# Antoniou et al. (2019), Sec. 4 (MSL) and the authors'
# get_per_step_loss_importance_vector: the floor of a non-final step's
# weight, in units of 1 / num_steps.
MSL_FLOOR = 0.03


def msl_weights(num_steps: int, epoch: int, msl_epochs: int) -> np.ndarray:
    """Multi-step-loss weights at `epoch`: float32 [num_steps].

    Exactly the authors' formula (N steps, E = msl_epochs, e = epoch):
    non-final steps max(1/N - e/(N*E), 0.03/N); the final step
    min(1/N + e*(N-1)/(N*E), 1 - (N-1)*0.03/N). They sum to 1.
    """
    if num_steps < 1 or msl_epochs < 1 or epoch < 0:
        raise ValueError(
            f"msl_weights needs num_steps >= 1, msl_epochs >= 1 and "
            f"epoch >= 0, got {num_steps}, {msl_epochs}, {epoch}."
        )
    uniform = 1.0 / num_steps
    decay = uniform / msl_epochs
    floor = MSL_FLOOR * uniform
    weights = np.full(num_steps, max(uniform - epoch * decay, floor))
    weights[-1] = min(
        uniform + epoch * (num_steps - 1) * decay,
        1.0 - (num_steps - 1) * floor,
    )
    return weights.astype(np.float32)


def use_multi_step_loss(config: config_lib.MetaLearnerConfig, epoch: int) -> bool:
    """MSL applies in training while epoch < msl_epochs (authors' code)."""
    return config.multi_step_loss and epoch < config.msl_epochs


def step_loss_weights(
    config: config_lib.MetaLearnerConfig, epoch: int, num_steps: int
) -> np.ndarray:
    """The weights of the per-step query losses in the meta-loss.

    With MSL active: `msl_weights`. Otherwise (MSL off, annealed out, or
    evaluation) the final step's loss alone: [0, ..., 0, 1].
    """
    if use_multi_step_loss(config, epoch) and num_steps == config.num_inner_steps:
        return msl_weights(num_steps, epoch, config.msl_epochs)
    weights = np.zeros(num_steps, np.float32)
    weights[-1] = 1.0
    return weights


def use_second_order(config: config_lib.MetaLearnerConfig, epoch: int) -> bool:
    """DA: first order while epoch <= first_order_to_second_order_epoch."""
    return config.second_order and epoch > config.first_order_to_second_order_epoch


def cosine_lr(
    epoch: int, total_epochs: int, max_lr: float, min_lr: float
) -> float:
    """PyTorch's CosineAnnealingLR at `epoch` (T_max = total_epochs).

    min + (max - min) * (1 + cos(pi * epoch / T)) / 2, stepped per epoch.
    """
    if total_epochs < 1 or epoch < 0:
        raise ValueError(
            f"cosine_lr needs total_epochs >= 1 and epoch >= 0, got "
            f"{total_epochs} and {epoch}."
        )
    cosine = (1.0 + math.cos(math.pi * epoch / total_epochs)) / 2.0
    return min_lr + (max_lr - min_lr) * cosine


def meta_lr(config: config_lib.MetaLearnerConfig, epoch: int) -> float:
    """The meta-optimizer's learning rate at `epoch` (CA or constant)."""
    if not config.cosine_annealing:
        return config.meta_lr
    return cosine_lr(
        epoch, config.total_epochs, config.meta_lr, config.min_meta_lr
    )
