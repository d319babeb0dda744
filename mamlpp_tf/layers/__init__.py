"""Keras 3 layers that run on explicit fast weights and per-step slots."""

from mamlpp_tf.layers.inner_learning_rates import InnerLearningRates
from mamlpp_tf.layers.meta_conv import MetaConv2D
from mamlpp_tf.layers.meta_dense import MetaDense
from mamlpp_tf.layers.per_step_batch_norm import PerStepBatchNorm
from mamlpp_tf.layers.per_step_batch_norm import batch_moments

__all__ = [
    "InnerLearningRates",
    "MetaConv2D",
    "MetaDense",
    "PerStepBatchNorm",
    "batch_moments",
]
