"""A 2-D convolution that can run on explicit (fast) weights."""

from __future__ import annotations

import tensorflow as tf

from mamlpp_tf.layers.kernel_layer import KernelLayer


class MetaConv2D(KernelLayer):
    """3x3 "same" convolution with bias, callable with fast weights.

    Glorot-uniform kernel and zero bias, as the authors' MetaConv2dLayer.

    Args:
      filters: output channels.
      kernel_size: square kernel side.
      strides: 1 (then a max-pool downsamples) or 2 (strided variant).
      matmul_dtype: see `KernelLayer`.

    Call args:
      inputs: [batch, H, W, C_in].
      params: None to use this layer's variables, or a dict with "kernel"
        [k, k, C_in, filters] and "bias" [filters] tensors (the fast weights).
    """

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1,
                 matmul_dtype: str | None = None, **kwargs):
        super().__init__(matmul_dtype=matmul_dtype, **kwargs)
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides}.")
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides

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

    def apply_kernel(self, inputs, kernel):
        return tf.nn.conv2d(inputs, kernel, strides=self.strides,
                            padding="SAME")

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if self.strides == 2:
            h, w = (None if h is None else -(-h // 2),
                    None if w is None else -(-w // 2))
        return (input_shape[0], h, w, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides}
