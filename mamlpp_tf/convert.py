"""Converts a Keras model of standard layers into its meta version.

`to_meta_model` clones a Sequential or functional model layer by layer:

    keras.layers.Conv2D             -> MetaConv2D
    keras.layers.Dense              -> MetaDense
    keras.layers.BatchNormalization -> PerStepBatchNorm (slots, momentum
                                       and epsilon from the config)
    weightless layers (activations, pooling, Add, Flatten, Dropout, ...)
                                    -> the same layer, in the config's dtype

and copies the weights the original model holds (BN gamma/beta and
running statistics into every slot). Anything else with weights is
refused with an error that names the layer and what to use instead.
"""

from __future__ import annotations

import keras
import numpy as np

from mamlpp_tf import backbone
from mamlpp_tf import config as config_lib
from mamlpp_tf.layers import MetaConv2D
from mamlpp_tf.layers import MetaDense
from mamlpp_tf.layers import PerStepBatchNorm
from mamlpp_tf.layers.kernel_layer import KernelLayer

# Layers with weights that have no meta version, and what to use instead.
REPLACEMENTS = {
    "DepthwiseConv2D": "a Conv2D",
    "SeparableConv2D": "a Conv2D",
    "Conv1D": "a Conv2D (the meta-layers are 2-D)",
    "Conv3D": "a Conv2D (the meta-layers are 2-D)",
    "Conv2DTranspose": "a Conv2D followed by keras.layers.UpSampling2D",
    "LayerNormalization": "a BatchNormalization (it becomes PerStepBatchNorm)",
    "GroupNormalization": "a BatchNormalization (it becomes PerStepBatchNorm)",
    "PReLU": "a keras.layers.LeakyReLU (no learned slope)",
}
SUPPORTED = ("Conv2D, Dense, BatchNormalization, and layers without weights "
             "(activations incl. ReLU/LeakyReLU, pooling, Add, Flatten, "
             "GlobalAveragePooling2D, Dropout, ...)")
_REGULARIZATION = ("kernel_regularizer", "bias_regularizer",
                   "activity_regularizer", "kernel_constraint",
                   "bias_constraint")


def _refuse(layer, reason: str, instead: str):
    raise ValueError(
        f"Cannot convert layer {layer.name!r} ({type(layer).__name__}): "
        f"{reason}. Use {instead} instead."
    )


def _check_kernel_layer(layer):
    for attribute in _REGULARIZATION:
        if getattr(layer, attribute, None) is not None:
            _refuse(layer, f"it sets {attribute}, which the meta-gradient "
                    "would not see", f"the same layer without {attribute}")


def _conv(layer, config):
    _check_kernel_layer(layer)
    cfg = layer.get_config()
    if cfg["data_format"] != "channels_last":
        _refuse(layer, "data_format must be channels_last", "NHWC images")
    if tuple(cfg["dilation_rate"]) != (1, 1) or cfg.get("groups", 1) != 1:
        _refuse(layer, "it is dilated or grouped",
                "dilation_rate=1 and groups=1")
    size, strides = tuple(cfg["kernel_size"]), tuple(cfg["strides"])
    if size[0] != size[1] or strides[0] != strides[1]:
        _refuse(layer, f"kernel_size {size} or strides {strides} is not "
                "square", "a square kernel_size and strides")
    return MetaConv2D(
        cfg["filters"], kernel_size=size[0], strides=strides[0],
        padding=cfg["padding"], use_bias=cfg["use_bias"],
        activation=cfg["activation"], dtype=config.dtype, name=layer.name,
    )


def _dense(layer, config):
    _check_kernel_layer(layer)
    cfg = layer.get_config()
    return MetaDense(cfg["units"], use_bias=cfg["use_bias"],
                     activation=cfg["activation"], dtype=config.dtype,
                     name=layer.name)


def _batch_norm(layer, config):
    cfg = layer.get_config()
    if cfg["axis"] not in (-1, 3, [-1], [3]):
        _refuse(layer, f"it normalises axis {cfg['axis']}",
                "axis=-1 (channels last)")
    if not (cfg["center"] and cfg["scale"]):
        _refuse(layer, "center or scale is off; PerStepBatchNorm always "
                "learns gamma and beta", "center=True, scale=True")
    if cfg.get("renorm") or cfg.get("synchronized"):
        _refuse(layer, "batch renormalisation and synchronized BN have no "
                "meta version", "a plain BatchNormalization")
    return PerStepBatchNorm(**backbone.bn_kwargs(config), dtype=config.dtype,
                            name=layer.name)


_CONVERTERS = {
    keras.layers.Conv2D: _conv,
    keras.layers.Dense: _dense,
    keras.layers.BatchNormalization: _batch_norm,
}


def convert_layer(layer, config: config_lib.MetaLearnerConfig):
    """The meta version of one layer (a new, unbuilt layer).

    Raises:
      ValueError: the layer has weights and no meta version.
    """
    converter = _CONVERTERS.get(type(layer))
    if converter is not None:
        return converter(layer, config)
    if isinstance(layer, (KernelLayer, PerStepBatchNorm)):
        return type(layer).from_config(
            {**layer.get_config(), "dtype": config.dtype}
        )
    kind = type(layer).__name__
    if layer.weights:
        _refuse(layer, "it has weights and no meta version",
                REPLACEMENTS.get(kind, f"one of: {SUPPORTED}"))
    return type(layer).from_config({**layer.get_config(),
                                    "dtype": config.dtype})


def _copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Puts the source model's weights into its converted layers."""
    converted = {layer.name: layer for layer in target._flatten_layers(
        include_self=False, recursive=True)}
    for layer in source._flatten_layers(include_self=False, recursive=True):
        if not layer.weights or not layer.built:
            continue
        meta = converted[layer.name]
        if isinstance(meta, PerStepBatchNorm):
            pairs = (("gamma", layer.gamma), ("beta", layer.beta),
                     ("moving_mean", layer.moving_mean),
                     ("moving_variance", layer.moving_variance))
            for name, value in pairs:
                variable = getattr(meta, name)
                variable.assign(np.broadcast_to(
                    np.asarray(value), variable.shape
                ).astype(variable.dtype))
        else:
            for mine, theirs in zip(meta.weights, layer.weights, strict=True):
                mine.assign(np.asarray(theirs).astype(mine.dtype))


def to_meta_model(
    model: keras.Model, config: config_lib.MetaLearnerConfig
) -> backbone.MetaModel:
    """The meta version of a Sequential or functional Keras model.

    Args:
      model: built from Conv2D, Dense, BatchNormalization and weightless
        layers, taking one [batch, H, W, C] input (config.image_shape) and
        returning [batch, num_ways] logits. Its weights, where built, are
        copied; BN layers take the config's per-step slots, momentum and
        epsilon (the MAML++ settings), not their own.
      config: the experiment's `MetaLearnerConfig` (dtype, BN parts).

    Raises:
      ValueError: a layer cannot be converted (the message names it and
        what to use instead), or the model is subclassed.
    """
    # A functional model is a keras.Function (its graph); Sequential not.
    if not isinstance(model, (keras.Sequential, keras.Function)):
        raise ValueError(
            f"Cannot convert {model.name!r}: it is a subclassed model, "
            "whose graph Keras cannot read. Build it as a Sequential or "
            "functional model, or build it from meta-layers (MetaConv2D, "
            "MetaDense, PerStepBatchNorm) and wrap it in MetaModel."
        )
    if not model.built:
        raise ValueError(
            f"Cannot convert {model.name!r}: it is not built, so its layers' "
            "weights are unknown. Start it with keras.Input(shape=(H, W, C)) "
            "or call model.build((None, H, W, C)) first."
        )
    inputs = keras.Input(config.image_shape, dtype=config.dtype)
    clone = keras.models.clone_model(
        model, input_tensors=inputs, recursive=True,
        clone_function=lambda layer: convert_layer(layer, config),
    )
    _copy_weights(model, clone)
    return backbone.MetaModel(clone, input_shape=config.image_shape,
                              dtype=config.dtype,
                              name=f"{model.name}_meta")
