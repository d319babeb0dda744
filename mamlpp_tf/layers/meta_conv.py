"""A 2-D convolution that can run on explicit (fast) weights."""

from __future__ import annotations

import keras
import tensorflow as tf


class MetaConv2D(keras.layers.Layer):
    """3x3 "same" convolution with bias, callable with fast weights.

    Glorot-uniform kernel and zero bias, as the authors' MetaConv2dLayer.

    Args:
      filters: output channels.
      kernel_size: square kernel side.
      strides: 1 (then a max-pool downsamples) or 2 (strided variant).
      matmul_dtype: None, or "bfloat16" to convolve in bfloat16 (inputs and
        kernel cast, output cast back); the bias add and everything else
        stay in the layer's dtype.

    Call args:
      inputs: [batch, H, W, C_in].
      params: None to use this layer's variables, or a dict with "kernel"
        [k, k, C_in, filters] and "bias" [filters] tensors (the fast weights).
    """

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1,
                 matmul_dtype: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides}.")
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.matmul_dtype = matmul_dtype

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, input_shape[-1],
                   self.filters),
            initializer="glorot_uniform",
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.filters,), initializer="zeros"
        )

    def call(self, inputs, *, params=None):
        if params is None:
            params = {"kernel": self.kernel, "bias": self.bias}
        kernel = params["kernel"]
        if self.matmul_dtype is not None:
            inputs = tf.cast(inputs, self.matmul_dtype)
            kernel = tf.cast(kernel, self.matmul_dtype)
        outputs = tf.nn.conv2d(inputs, kernel, strides=self.strides,
                               padding="SAME")
        outputs = tf.cast(outputs, params["bias"].dtype)
        return tf.nn.bias_add(outputs, params["bias"])

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if self.strides == 2:
            h, w = (None if h is None else -(-h // 2),
                    None if w is None else -(-w // 2))
        return (input_shape[0], h, w, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "matmul_dtype": self.matmul_dtype}
