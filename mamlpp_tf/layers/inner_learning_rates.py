"""LSLR: learned per-layer, per-step inner learning rates."""

from __future__ import annotations

import keras


def rate_variable_name(param_name: str) -> str:
    """Keras weight names cannot hold "/": conv0/kernel -> conv0-kernel."""
    return param_name.replace("/", "-")


class InnerLearningRates(keras.layers.Layer):
    """One learnable inner learning rate per adapted tensor per step.

    Antoniou et al. (2019), Sec. 4 (LSLR): rates are initialised to
    `init_lr`, learned by the outer optimizer and not clamped.

    Args:
      param_names: names of the adapted tensors, e.g. "conv0/kernel".
      num_steps: trained inner steps; step k >= num_steps uses the last rate.
      init_lr: initial value of every rate.
    """

    def __init__(self, param_names, num_steps: int, init_lr: float, **kwargs):
        super().__init__(**kwargs)
        self.param_names = tuple(param_names)
        self.num_steps = num_steps
        self.init_lr = init_lr
        self.rates = {}
        # The rates' shapes do not depend on any input: build right away.
        self.build()

    def build(self, input_shape=None):
        for name in self.param_names:
            self.rates[name] = self.add_weight(
                name=rate_variable_name(name),
                shape=(self.num_steps,),
                initializer=keras.initializers.Constant(self.init_lr),
            )

    def rate(self, param_name: str, step: int, rates=None):
        """The rate of `param_name` at `step` (a scalar tensor).

        Args:
          rates: None for the variables, or a dict name -> [num_steps] tensor.
        """
        source = self.rates if rates is None else rates
        return source[param_name][min(step, self.num_steps - 1)]

    def get_config(self):
        return {**super().get_config(), "param_names": list(self.param_names),
                "num_steps": self.num_steps, "init_lr": self.init_lr}
