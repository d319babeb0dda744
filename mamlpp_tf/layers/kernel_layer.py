"""The shared call of the layers that multiply by a kernel and add a bias."""

from __future__ import annotations

import keras
import tensorflow as tf


class KernelLayer(keras.layers.Layer):
    """outputs = apply_kernel(inputs, kernel) + bias, on fast weights or not.

    Subclasses create `kernel` and `bias` in `build` and define
    `apply_kernel` (a convolution, a matmul).

    Args:
      matmul_dtype: None, or "bfloat16" to run `apply_kernel` in bfloat16
        (inputs and kernel cast, output cast back); the bias add and all
        else stay in the layer's dtype.

    Call args:
      inputs: the layer's input.
      params: None for the layer's variables, or a dict with "kernel" and
        "bias" tensors (the fast weights).
    """

    def __init__(self, matmul_dtype: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.matmul_dtype = matmul_dtype

    def apply_kernel(self, inputs, kernel):
        raise NotImplementedError(
            f"{type(self).__name__} must define apply_kernel(inputs, kernel)."
        )

    def call(self, inputs, *, params=None):
        if params is None:
            params = {"kernel": self.kernel, "bias": self.bias}
        kernel = params["kernel"]
        if self.matmul_dtype is not None:
            inputs = tf.cast(inputs, self.matmul_dtype)
            kernel = tf.cast(kernel, self.matmul_dtype)
        outputs = tf.cast(self.apply_kernel(inputs, kernel),
                          params["bias"].dtype)
        return tf.nn.bias_add(outputs, params["bias"])

    def get_config(self):
        return {**super().get_config(), "matmul_dtype": self.matmul_dtype}
