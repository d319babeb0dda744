"""The fast weights, inner step and BN moments of one meta-model call.

A meta-model built as an ordinary Keras model (Sequential, functional or
subclassed) cannot pass `params` and `step` through Keras' own call graph.
`MetaModel.forward` opens a `meta_call` instead: while it is open, every
meta-layer called without explicit `params` takes its fast weights, the
step and the training flag from it, and every `PerStepBatchNorm` records
its batch moments in it, in call order.

The state is per thread: `MirroredStrategy` runs each replica's forward
pass in a thread of its own.
"""

from __future__ import annotations

import contextlib
import threading

_LOCAL = threading.local()


class MetaCall:
    """What one forward pass runs on, and what its BN layers report.

    Attributes:
      params: None (the layers' own variables) or a dict "layer/weight" ->
        tensor holding at least every weight of the layers called.
      step: Python int, the inner step (selects BN slots).
      training: meta-training pass (batch statistics in every BN mode).
      layers: the meta-layers called, in call order (a layer called twice
        appears twice).
      moments: one (layer, (mean, variance) or None) pair per BN call.
    """

    def __init__(self, params, step: int, training: bool):
        self.params = params
        self.step = step
        self.training = training
        self.layers = []
        self.moments = []

    def layer_params(self, layer, weight_names):
        """The fast weights of `layer` ({weight: tensor}), or None."""
        self.layers.append(layer)
        if self.params is None:
            return None
        found = {}
        for weight in weight_names:
            key = f"{layer.name}/{weight}"
            if key not in self.params:
                raise KeyError(
                    f"The fast weights lack {key!r}: the params dict must "
                    "hold every trainable weight of the meta-model, keyed "
                    "by 'layer/weight' (see MetaModel.param_names())."
                )
            found[weight] = self.params[key]
        return found


def current() -> MetaCall | None:
    """The innermost open `meta_call` of this thread, or None."""
    stack = getattr(_LOCAL, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def meta_call(params, step: int, training: bool):
    """Opens a `MetaCall` for the meta-layers called inside the block."""
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    call = MetaCall(params, step, training)
    _LOCAL.stack.append(call)
    try:
        yield call
    finally:
        _LOCAL.stack.pop()
