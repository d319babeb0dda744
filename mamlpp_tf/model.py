"""The 4-stage convolutional backbone of MAML and MAML++.

conv 3x3 -> per-step batch norm -> LeakyReLU(0.01) -> 2x2 max-pool, four
times, then flatten -> dense to num_ways logits: the authors'
VGGReLUNormNetwork, with which the paper's numbers were produced.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mamlpp_tf import config as config_lib
from mamlpp_tf import resnet
from mamlpp_tf.layers import MetaConv2D
from mamlpp_tf.layers import MetaDense
from mamlpp_tf.layers import PerStepBatchNorm

# The authors' MetaConvNormLayerReLU: F.leaky_relu with its default slope.
LEAKY_RELU_SLOPE = 0.01


class FewShotClassifier(keras.Model):
    """Conv backbone whose every call can take fast weights and a step.

    Args:
      num_ways: output logits.
      num_filters: channels of every stage.
      num_stages: conv stages.
      downsampling: "max_pool" or "strided" (stride-2 convs, then global
        average pooling before the classifier).
      num_weight_slots, num_statistics_slots, use_running_statistics,
      bn_momentum, bn_epsilon: see `PerStepBatchNorm`.
      matmul_dtype: None, or "bfloat16" for mixed precision: convolutions
        and the classifier's matmul in bfloat16, the rest in float32.
      fused_batch_norm: see `PerStepBatchNorm(fused=...)`.

    Call args:
      inputs: [batch, H, W, C].
      step: Python int, the inner step (selects the BN slots).
      params: None, or a dict "layer/weight" -> tensor holding every
        trainable weight of the network (see `param_names`).
      training: meta-training pass (batch statistics in every BN mode).
    """

    def __init__(self, *, num_ways: int, num_filters: int, num_stages: int = 4,
                 downsampling: str = "max_pool", num_weight_slots: int = 1,
                 num_statistics_slots: int = 1,
                 use_running_statistics: bool = False,
                 bn_momentum: float = 0.1, bn_epsilon: float = 1e-5,
                 matmul_dtype: str | None = None,
                 fused_batch_norm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_ways = num_ways
        self.num_filters = num_filters
        self.num_stages = num_stages
        self.downsampling = downsampling
        self.num_weight_slots = num_weight_slots
        self.num_statistics_slots = num_statistics_slots
        self.use_running_statistics = use_running_statistics
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.matmul_dtype = matmul_dtype
        self.fused_batch_norm = fused_batch_norm
        strides = 2 if downsampling == "strided" else 1
        self.convs = [
            MetaConv2D(num_filters, strides=strides, name=f"conv{i}",
                       matmul_dtype=matmul_dtype, dtype=self.dtype_policy)
            for i in range(num_stages)
        ]
        self.norms = [
            PerStepBatchNorm(
                num_weight_slots, num_statistics_slots,
                use_running_statistics, bn_momentum, bn_epsilon,
                fused=fused_batch_norm, name=f"norm{i}",
                dtype=self.dtype_policy,
            )
            for i in range(num_stages)
        ]
        self.classifier = MetaDense(num_ways, name="dense",
                                    matmul_dtype=matmul_dtype,
                                    dtype=self.dtype_policy)

    @property
    def norm_layers(self) -> list:
        """The BN layers, in the order of `forward`'s moments."""
        return list(self.norms)

    @property
    def layers_by_name(self):
        return {layer.name: layer
                for layer in [*self.convs, *self.norms, self.classifier]}

    def param_names(self) -> list[str]:
        """Names of the trainable weights, in `trainable_variables` order."""
        names = []
        for layer in [*self.convs, *self.norms, self.classifier]:
            for weight in layer.trainable_weights:
                names.append(f"{layer.name}/{weight.name}")
        return names

    def named_variables(self) -> dict:
        """"layer/weight" -> variable, for every trainable weight."""
        named = {}
        for layer in [*self.convs, *self.norms, self.classifier]:
            for weight in layer.trainable_weights:
                named[f"{layer.name}/{weight.name}"] = weight
        return named

    def adapted_param_names(self, adapt_bn: bool) -> list[str]:
        """The tensors the inner loop updates: conv/dense kernels and biases,
        and BN gamma/beta when `adapt_bn`."""
        prefixes = [layer.name for layer in [*self.convs, self.classifier]]
        if adapt_bn:
            prefixes += [layer.name for layer in self.norms]
        return [n for n in self.param_names() if n.split("/")[0] in prefixes]

    @staticmethod
    def _layer_params(params, layer):
        if params is None:
            return None
        prefix = layer.name + "/"
        return {k[len(prefix):]: v for k, v in params.items()
                if k.startswith(prefix)}

    def forward(self, inputs, *, step: int, params=None, training=False):
        """Logits [batch, num_ways] and the BN batch moments of each stage.

        The moments are a list with one (mean, variance) pair per stage, or
        None where running statistics were used.
        """
        x = inputs
        moments = []
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x, params=self._layer_params(params, conv))
            x, stage_moments = norm.normalize(
                x, step=step, params=self._layer_params(params, norm),
                training=training,
            )
            moments.append(stage_moments)
            x = tf.nn.leaky_relu(x, alpha=LEAKY_RELU_SLOPE)
            if self.downsampling == "max_pool":
                x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")
        if self.downsampling == "strided":
            x = tf.reduce_mean(x, axis=[1, 2])  # [batch, filters]
        else:
            # Channels last: equal to the authors' NCHW flatten at 1x1.
            x = tf.reshape(x, [tf.shape(x)[0], -1])  # [batch, H*W*C]
        logits = self.classifier(
            x, params=self._layer_params(params, self.classifier)
        )
        return logits, moments

    def call(self, inputs, *, step: int = 0, params=None, training=False):
        return self.forward(inputs, step=step, params=params,
                            training=training)[0]

    def get_config(self):
        return {
            **super().get_config(),
            "num_ways": self.num_ways,
            "num_filters": self.num_filters,
            "num_stages": self.num_stages,
            "downsampling": self.downsampling,
            "num_weight_slots": self.num_weight_slots,
            "num_statistics_slots": self.num_statistics_slots,
            "use_running_statistics": self.use_running_statistics,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "matmul_dtype": self.matmul_dtype,
            "fused_batch_norm": self.fused_batch_norm,
        }


def build_classifier(
    config: config_lib.MetaLearnerConfig, matmul_dtype: str | None = None,
    fused_batch_norm: bool = False,
) -> FewShotClassifier:
    """The backbone of `config`, built (its variables exist on return).

    Args:
      matmul_dtype: None, or "bfloat16" for mixed precision.
      fused_batch_norm: see `PerStepBatchNorm(fused=...)`.
    """
    per_step_weights = config.per_step_bn_weights
    per_step_stats = config.per_step_bn_statistics
    model = FewShotClassifier(
        num_ways=config.num_ways,
        num_filters=config.num_filters,
        num_stages=config.num_stages,
        downsampling=config.downsampling,
        num_weight_slots=config.num_inner_steps if per_step_weights else 1,
        num_statistics_slots=config.num_inner_steps if per_step_stats else 1,
        use_running_statistics=config.bn_mode == "per_step_running",
        bn_momentum=config.bn_momentum,
        bn_epsilon=config.bn_epsilon,
        matmul_dtype=matmul_dtype,
        fused_batch_norm=fused_batch_norm,
        dtype=config.dtype,
        name="few_shot_classifier",
    )
    # One eager pass builds every layer; two examples keep BN well defined.
    model(tf.zeros((2, *config.image_shape), config.dtype), step=0,
          training=True)
    return model


BUILDERS = {"conv4": build_classifier, "resnet12": resnet.build_resnet12}


def build_backbone(
    config: config_lib.MetaLearnerConfig, matmul_dtype: str | None = None,
    fused_batch_norm: bool = False,
):
    """The built-in backbone `config.backbone` names, built."""
    return BUILDERS[config.backbone](config, matmul_dtype, fused_batch_norm)
