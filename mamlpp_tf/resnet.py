"""ResNet-12, the backbone of recent few-shot results, from meta-layers.

Four residual blocks (Oreshkin et al. 2018, TADAM; Lee et al. 2019,
MetaOptNet), each: three 3x3 conv -> BN, with LeakyReLU(0.1) after the
first two; a 1x1 conv -> BN shortcut added to the third; LeakyReLU(0.1)
after the sum; a 2x2 max-pool. Then global average pooling and the
classifier. Convolutions have no bias: the batch norm after each one
subtracts the batch mean, which cancels it. Every BN layer is a
PerStepBatchNorm, so all MAML++ parts apply.
"""

from __future__ import annotations

import keras

from mamlpp_tf import backbone
from mamlpp_tf import config as config_lib
from mamlpp_tf.layers import MetaConv2D
from mamlpp_tf.layers import MetaDense
from mamlpp_tf.layers import PerStepBatchNorm

# TADAM / MetaOptNet ResNet-12: LeakyReLU slope 0.1.
LEAKY_RELU_SLOPE = 0.1
CONVS_PER_BLOCK = 3


def resnet12_network(
    config: config_lib.MetaLearnerConfig,
    matmul_dtype: str | None = None,
    fused_batch_norm: bool = False,
) -> keras.Model:
    """The functional Keras model of ResNet-12 for `config`.

    Widths: `config.resnet_widths` (64-160-320-640 by default), one block
    each. Layer names: block{b}_conv{i}, block{b}_norm{i},
    block{b}_shortcut_conv, block{b}_shortcut_norm, classifier.
    """
    dtype = config.dtype
    bn = {**backbone.bn_kwargs(config), "fused": fused_batch_norm,
          "dtype": dtype}

    def conv(width, size, name):
        return MetaConv2D(width, kernel_size=size, use_bias=False,
                          matmul_dtype=matmul_dtype, dtype=dtype, name=name)

    def relu():
        return keras.layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE,
                                      dtype=dtype)

    inputs = keras.Input(config.image_shape, dtype=dtype)
    x = inputs
    for b, width in enumerate(config.resnet_widths):
        shortcut = conv(width, 1, f"block{b}_shortcut_conv")(x)
        shortcut = PerStepBatchNorm(**bn, name=f"block{b}_shortcut_norm")(
            shortcut
        )
        for i in range(CONVS_PER_BLOCK):
            x = conv(width, 3, f"block{b}_conv{i}")(x)
            x = PerStepBatchNorm(**bn, name=f"block{b}_norm{i}")(x)
            if i < CONVS_PER_BLOCK - 1:
                x = relu()(x)
        x = keras.layers.Add(dtype=dtype)([x, shortcut])
        x = relu()(x)
        x = keras.layers.MaxPooling2D(2, dtype=dtype)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)  # [batch, width]
    logits = MetaDense(config.num_ways, matmul_dtype=matmul_dtype,
                       dtype=dtype, name="classifier")(x)
    return keras.Model(inputs, logits, name="resnet12")


def build_resnet12(
    config: config_lib.MetaLearnerConfig,
    matmul_dtype: str | None = None,
    fused_batch_norm: bool = False,
) -> backbone.MetaModel:
    """ResNet-12 for `config`, built, to the backbone contract.

    Args:
      matmul_dtype: None, or "bfloat16" for mixed precision.
      fused_batch_norm: see `PerStepBatchNorm(fused=...)`.
    """
    return backbone.MetaModel(
        resnet12_network(config, matmul_dtype, fused_batch_norm),
        dtype=config.dtype, name="resnet12_meta",
    )
