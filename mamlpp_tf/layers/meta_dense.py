"""A dense layer that can run on explicit (fast) weights."""

from __future__ import annotations

import tensorflow as tf

from mamlpp_tf.layers.kernel_layer import KernelLayer


class MetaDense(KernelLayer):
    """logits = x @ kernel + bias; Glorot-uniform kernel, zero bias.

    Args:
      units: output features (num_ways for the classifier head).
      matmul_dtype, use_bias, activation: see `KernelLayer`.

    Call args:
      inputs: [batch, features].
      params: None for this layer's variables, or a dict with "kernel"
        [features, units] and "bias" [units] tensors (the fast weights).
    """

    def __init__(self, units: int, matmul_dtype: str | None = None,
                 use_bias: bool = True, activation=None, **kwargs):
        super().__init__(matmul_dtype=matmul_dtype, use_bias=use_bias,
                         activation=activation, **kwargs)
        self.units = units

    def build(self, input_shape):
        self.add_kernel_and_bias((input_shape[-1], self.units), self.units)

    def apply_kernel(self, inputs, kernel):
        return tf.matmul(inputs, kernel)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
