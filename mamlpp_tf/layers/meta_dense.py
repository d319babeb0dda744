"""A dense layer that can run on explicit (fast) weights."""

from __future__ import annotations

import keras
import tensorflow as tf


class MetaDense(keras.layers.Layer):
    """logits = x @ kernel + bias; Glorot-uniform kernel, zero bias.

    Args:
      units: output features (num_ways for the classifier head).

    Call args:
      inputs: [batch, features].
      params: None for this layer's variables, or a dict with "kernel"
        [features, units] and "bias" [units] tensors (the fast weights).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

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
        return tf.matmul(inputs, params["kernel"]) + params["bias"]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
