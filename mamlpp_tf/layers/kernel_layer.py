"""The shared call of the layers that multiply by a kernel and add a bias."""

from __future__ import annotations

import keras
import tensorflow as tf

from mamlpp_tf.layers import meta_call


class KernelLayer(keras.layers.Layer):
    """outputs = activation(apply_kernel(inputs, kernel) + bias).

    Runs on fast weights when given `params`, or, inside a `meta_call`, on
    the fast weights of that call. Subclasses create `kernel` (and `bias`
    when `use_bias`) in `build` and define `apply_kernel` (a convolution, a
    matmul).

    Args:
      matmul_dtype: None, or "bfloat16" to run `apply_kernel` in bfloat16
        (inputs and kernel cast, output cast back); the bias add and all
        else stay in the layer's dtype.
      use_bias: add a learned bias (False where a batch norm follows, whose
        mean subtraction cancels it).
      activation: None or a Keras activation name or function, applied
        after the bias (what `keras.layers.Conv2D(activation=...)` does).

    Call args:
      inputs: the layer's input.
      params: None for the layer's variables (or the open `meta_call`'s
        fast weights), or a dict with "kernel" (and "bias") tensors.
    """

    def __init__(self, matmul_dtype: str | None = None, use_bias: bool = True,
                 activation=None, **kwargs):
        super().__init__(**kwargs)
        self.matmul_dtype = matmul_dtype
        self.use_bias = use_bias
        self.activation = keras.activations.get(activation)

    def weight_names(self) -> tuple[str, ...]:
        return ("kernel", "bias") if self.use_bias else ("kernel",)

    def add_kernel_and_bias(self, kernel_shape, units: int) -> None:
        """Glorot-uniform kernel and zero bias (the authors' meta-layers)."""
        self.kernel = self.add_weight(
            name="kernel", shape=kernel_shape, initializer="glorot_uniform"
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(units,), initializer="zeros"
            )

    def apply_kernel(self, inputs, kernel):
        raise NotImplementedError(
            f"{type(self).__name__} must define apply_kernel(inputs, kernel)."
        )

    def call(self, inputs, *, params=None):
        if params is None:
            call = meta_call.current()
            if call is not None:
                params = call.layer_params(self, self.weight_names())
        if params is None:
            params = {n: getattr(self, n) for n in self.weight_names()}
        kernel = params["kernel"]
        if self.matmul_dtype is not None:
            inputs = tf.cast(inputs, self.matmul_dtype)
            kernel = tf.cast(kernel, self.matmul_dtype)
        outputs = tf.cast(self.apply_kernel(inputs, kernel), self.compute_dtype)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, params["bias"])
        return self.activation(outputs)

    def get_config(self):
        return {
            **super().get_config(),
            "matmul_dtype": self.matmul_dtype,
            "use_bias": self.use_bias,
            "activation": keras.activations.serialize(self.activation),
        }
