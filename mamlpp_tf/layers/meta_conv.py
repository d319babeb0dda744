"""A 2-D convolution that can run on explicit (fast) weights."""

from __future__ import annotations

from mamlpp_tf.layers.kernel_layer import KernelLayer

import tensorflow as tf

PADDINGS = ("same", "valid")


class MetaConv2D(KernelLayer):
    """Square convolution, callable with fast weights.

    Glorot-uniform kernel and zero bias, as the authors' MetaConv2dLayer.
    The defaults (3x3, stride 1, "same", bias) are the 4-conv network's.

    Args:
      filters: output channels.
      kernel_size: square kernel side (1 for a residual shortcut).
      strides: square stride, an int >= 1.
      padding: "same" or "valid".
      matmul_dtype, use_bias, activation: see `KernelLayer`.

    Call args:
      inputs: [batch, H, W, C_in].
      params: None to use this layer's variables, or a dict with "kernel"
        [k, k, C_in, filters] and "bias" [filters] tensors (the fast weights).
    """

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1,
                 padding: str = "same", matmul_dtype: str | None = None,
                 use_bias: bool = True, activation=None, **kwargs):
        super().__init__(matmul_dtype=matmul_dtype, use_bias=use_bias,
                         activation=activation, **kwargs)
        for arg, value in (("filters", filters), ("kernel_size", kernel_size),
                           ("strides", strides)):
            if not isinstance(value, int) or isinstance(value, bool) or (
                    value < 1):
                raise ValueError(f"{arg} must be an int >= 1, got {value!r}.")
        if padding not in PADDINGS:
            raise ValueError(
                f"padding must be one of {PADDINGS}, got {padding!r}."
            )
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding

    def build(self, input_shape):
        k = self.kernel_size
        self.add_kernel_and_bias((k, k, input_shape[-1], self.filters),
                                 self.filters)

    def apply_kernel(self, inputs, kernel):
        return tf.nn.conv2d(inputs, kernel, strides=self.strides,
                            padding=self.padding.upper())

    def _side(self, size):
        if size is None:
            return None
        if self.padding == "valid":
            size = size - self.kernel_size + 1
        return -(-size // self.strides)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self._side(input_shape[1]),
                self._side(input_shape[2]), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding}
