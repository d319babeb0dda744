"""The backbone contract: what `MetaLearner` needs from a network.

A backbone is a Keras model that runs on explicit fast weights and an
inner step. `MetaLearner` reads everything else from it: which tensors
exist and which the inner loop adapts (`param_names`,
`adapted_param_names`), its batch-norm layers in the order of their
moments (`norm_layers`), the channels of each (`PerStepBatchNorm.channels`)
and the elements per channel behind each one's batch moments on a
support-set batch (`moment_counts`, one probe pass). No layout arithmetic.

Two kinds of model meet the contract:
  * `FewShotClassifier` (model.py), the 4-conv network, written out;
  * `MetaModel`, which wraps any Keras model (Sequential, functional or
    subclassed) whose weights all live in meta-layers (`MetaConv2D`,
    `MetaDense`, `PerStepBatchNorm`); weightless layers (activations,
    pooling, `Add`, `Flatten`, ...) are used as they are. `convert.py`
    turns a model of standard Keras layers into one.
"""

from __future__ import annotations

import importlib

import keras
import tensorflow as tf

from mamlpp_tf import config as config_lib
from mamlpp_tf.layers import PerStepBatchNorm
from mamlpp_tf.layers import meta_call
from mamlpp_tf.layers.kernel_layer import KernelLayer

# What `MetaLearner` calls on a backbone (besides Keras' `variables`).
CONTRACT = ("forward", "param_names", "named_variables",
            "adapted_param_names", "norm_layers")
META_LAYERS = (KernelLayer, PerStepBatchNorm)


def _unique(layers):
    seen, out = set(), []
    for layer in layers:
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


class MetaModel(keras.Model):
    """Any Keras model of meta-layers, to the backbone contract.

    One probe pass (eager, on zeros) finds the meta-layers in call order,
    the BN layers in the order of their moments, and checks that every
    trainable weight belongs to a meta-layer.

    Args:
      network: a Keras model (Sequential, functional or subclassed) built
        from meta-layers and weightless layers. Every layer must use the
        dtype of the images it is fed (Keras casts inputs to a layer's
        dtype).
      input_shape: (H, W, C) of one image; None takes the network's own
        input shape (a model built on `keras.Input`).

    Call args (`forward`, `call`):
      inputs: [batch, H, W, C].
      step: Python int, the inner step (selects BN slots).
      params: None for the variables, or a dict "layer/weight" -> tensor
        holding every trainable weight (see `param_names`).
      training: meta-training pass (batch statistics in every BN mode).
    """

    def __init__(self, network: keras.Model, input_shape=None, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        if input_shape is None:
            try:
                input_shape = tuple(network.input_shape[1:])
            except (AttributeError, ValueError) as error:
                raise ValueError(
                    f"The input shape of {network.name!r} is unknown: build "
                    "it on keras.Input(shape=(H, W, C)) or pass "
                    "MetaModel(network, input_shape=(H, W, C))."
                ) from error
        self.image_shape = tuple(int(d) for d in input_shape)
        self._discover()

    def _discover(self):
        dtype = self.network.dtype_policy.variable_dtype
        probe = tf.zeros((2, *self.image_shape), dtype)
        with meta_call.meta_call(None, 0, True) as call:
            self.network(probe, training=True)
        self._meta_layers = _unique(call.layers)
        norms = [layer for layer, _ in call.moments]
        repeated = sorted({n.name for n in norms if norms.count(n) > 1})
        if repeated:
            raise ValueError(
                f"The PerStepBatchNorm layers {repeated} are called more than "
                "once per forward pass; their running statistics take one "
                "batch per step. Give each call site a layer of its own."
            )
        self._norms = norms
        self._check_weights()

    def _check_weights(self):
        covered = {id(w) for layer in self._meta_layers
                   for w in layer.trainable_weights}
        for layer in self.network._flatten_layers(include_self=False,
                                                  recursive=True):
            own = [w for w in layer.trainable_weights if id(w) not in covered]
            if own and not isinstance(layer, keras.Model):
                raise ValueError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) has "
                    "trainable weights but is not a meta-layer, so the inner "
                    "loop could not adapt it. Build it from MetaConv2D, "
                    "MetaDense or PerStepBatchNorm, or convert the model "
                    "with mamlpp_tf.to_meta_model."
                )
        names = [f"{layer.name}/{w.name}" for layer in self._meta_layers
                 for w in layer.trainable_weights]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"Two meta-layers share the weight names {duplicates}: give "
                "every meta-layer a unique name (name=...)."
            )

    @property
    def norm_layers(self) -> list:
        """The PerStepBatchNorm layers, in the order of `forward`'s moments."""
        return list(self._norms)

    def _named(self):
        for layer in self._meta_layers:
            for weight in layer.trainable_weights:
                yield f"{layer.name}/{weight.name}", weight

    def param_names(self) -> list[str]:
        """Names "layer/weight" of the trainable weights, in call order."""
        return [name for name, _ in self._named()]

    def named_variables(self) -> dict:
        """"layer/weight" -> variable, for every trainable weight."""
        return dict(self._named())

    def adapted_param_names(self, adapt_bn: bool) -> list[str]:
        """Kernels and biases, and BN gamma/beta when `adapt_bn`."""
        kinds = (KernelLayer, PerStepBatchNorm) if adapt_bn else KernelLayer
        return [f"{layer.name}/{w.name}" for layer in self._meta_layers
                if isinstance(layer, kinds) for w in layer.trainable_weights]

    def forward(self, inputs, *, step: int, params=None, training=False):
        """Logits and the batch moments of each BN layer (`norm_layers`
        order): (mean, variance) pairs, or None where running statistics
        were used."""
        with meta_call.meta_call(params, step, training) as call:
            logits = self.network(inputs, training=training)
        called = [layer for layer, _ in call.moments]
        if [id(n) for n in called] != [id(n) for n in self._norms]:
            raise ValueError(
                "This forward pass called the BN layers "
                f"{[n.name for n in called]}, the probe pass "
                f"{[n.name for n in self._norms]}: a meta-model must call "
                "the same BN layers in the same order on every pass."
            )
        return logits, [moments for _, moments in call.moments]

    def call(self, inputs, *, step: int = 0, params=None, training=False):
        return self.forward(inputs, step=step, params=params,
                            training=training)[0]

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "input_shape": list(self.image_shape),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(
            config["network"]
        )
        return cls(**config)


def bn_kwargs(config: config_lib.MetaLearnerConfig) -> dict:
    """The PerStepBatchNorm arguments that `config`'s MAML++ parts imply.

    BNWB: one gamma/beta slot per inner step; BNRS: one running-statistics
    slot per step; "per_step_running" normalises with them at evaluation.
    """
    steps = config.num_inner_steps
    return {
        "num_weight_slots": steps if config.per_step_bn_weights else 1,
        "num_statistics_slots": steps if config.per_step_bn_statistics else 1,
        "use_running_statistics": config.bn_mode == "per_step_running",
        "momentum": config.bn_momentum,
        "epsilon": config.bn_epsilon,
    }


def import_constructor(path: str):
    """The function that "module:function" names.

    Raises:
      ValueError: the module cannot be imported or lacks the function.
    """
    module_name, _, function_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"custom_backbone={path!r}: cannot import {module_name!r} "
            f"({error}). Install it, or add its folder to PYTHONPATH."
        ) from error
    constructor = getattr(module, function_name, None)
    if not callable(constructor):
        raise ValueError(
            f"custom_backbone={path!r}: {module_name!r} has no function "
            f"{function_name!r}."
        )
    return constructor


def as_backbone(model, config: config_lib.MetaLearnerConfig):
    """`model` if it meets the contract, else `MetaModel(model)`."""
    if all(hasattr(model, name) for name in CONTRACT):
        return model
    if isinstance(model, keras.Model):
        return MetaModel(model, input_shape=config.image_shape)
    raise TypeError(
        f"A backbone must be a Keras model or a constructor returning one, "
        f"got {type(model).__name__}."
    )


def check_backbone(model, config: config_lib.MetaLearnerConfig) -> list[int]:
    """Checks `model` against `config`; returns its moment counts.

    A probe pass on a support-set batch of zeros (training, step 0) checks
    the logits' shape and dtype and gives each BN layer's
    `last_moment_count`: the elements per channel behind its batch moments
    in one task's support pass, which weight the running variance.

    Raises:
      ValueError: a BN layer's slots or mode disagree with `config`'s
        MAML++ parts, a weight's dtype is not `config.dtype`, the logits
        are not [ways*shots, num_ways], or a count is unknown.
    """
    expected = bn_kwargs(config)
    for norm in model.norm_layers:
        if not isinstance(norm, PerStepBatchNorm):
            raise ValueError(
                f"norm_layers must be PerStepBatchNorm layers, got "
                f"{type(norm).__name__} {norm.name!r}."
            )
        got = {k: getattr(norm, k) for k in expected}
        if got != expected:
            raise ValueError(
                f"PerStepBatchNorm {norm.name!r} has {got}, but the config's "
                f"MAML++ parts need {expected}. Build it with "
                "**mamlpp_tf.bn_kwargs(config)."
            )
    for name, variable in model.named_variables().items():
        if variable.dtype != config.dtype:
            raise ValueError(
                f"Weight {name!r} is {variable.dtype}, the config's dtype "
                f"is {config.dtype}: build every layer with "
                f"dtype={config.dtype!r}."
            )
    n = config.num_ways * config.num_shots
    logits, _ = model.forward(tf.zeros((n, *config.image_shape),
                                       config.dtype), step=0, training=True)
    if tuple(logits.shape) != (n, config.num_ways):
        raise ValueError(
            f"The backbone's logits have shape {tuple(logits.shape)} for "
            f"{n} images; expected ({n}, {config.num_ways}) (num_ways="
            f"{config.num_ways}). End the network with a "
            "MetaDense(num_ways) classifier."
        )
    counts = [norm.last_moment_count for norm in model.norm_layers]
    if any(c is None or c < 2 for c in counts):
        raise ValueError(
            f"The BN layers' elements per channel on a support batch are "
            f"{counts}; each must be a static count >= 2."
        )
    return counts
