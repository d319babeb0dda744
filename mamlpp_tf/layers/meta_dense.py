"""A dense layer that can run on explicit (fast) weights."""

from __future__ import annotations

import keras
import tensorflow as tf


class MetaDense(keras.layers.Layer):
    """logits = x @ kernel + bias; Glorot-uniform kernel, zero bias.

    Args:
      units: output features (num_ways for the classifier head).
      matmul_dtype: None, or "bfloat16" to multiply in bfloat16 (the bias
        add and the logits stay in the layer's dtype).

    Call args:
      inputs: [batch, features].
      params: None for this layer's variables, or a dict with "kernel"
        [features, units] and "bias" [units] tensors (the fast weights).
    """

    def __init__(self, units: int, matmul_dtype: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.matmul_dtype = matmul_dtype

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], self.units),
            initializer="glorot_uniform",
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.units,), initializer="zeros"
        )

    def call(self, inputs, *, params=None):
        if params is None:
            params = {"kernel": self.kernel, "bias": self.bias}
        kernel = params["kernel"]
        if self.matmul_dtype is not None:
            inputs = tf.cast(inputs, self.matmul_dtype)
            kernel = tf.cast(kernel, self.matmul_dtype)
        outputs = tf.cast(tf.matmul(inputs, kernel), params["bias"].dtype)
        return outputs + params["bias"]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "matmul_dtype": self.matmul_dtype}
