"""Batch norm with one slot of weights and statistics per inner step.

MAML++ BNWB (per-step gamma/beta) and BNRS (per-step running statistics),
Antoniou et al. (2019), Sec. 4. A layer built with one slot of each is the
plain batch norm of MAML.

How the running statistics move (`MetaLearner.train_step` calls
`update_statistics`): once per applied meta-step (a skipped, non-finite
step leaves them), after the Adam update, slot k of each stage moves with
momentum 0.1 towards the batch moments of the support pass of inner step k,
averaged over every task of the global meta-batch (all replicas): the mean
of the tasks' means, and the mean of their biased variances times
n / (n - 1), n the elements per channel of one task's support pass. Query
passes and evaluation never move them; with one slot (no BNRS) the slot
moves once per inner step. They normalise only with
`use_running_statistics` ("per_step_running") and `training=False`.

The authors' code differs: PyTorch's `F.batch_norm(training=True,
momentum=0.1)` moves slot k on every forward pass of step k, support and
query, task after task (2T moves of one task's moments each per meta-step
of T tasks at a step with a query pass); their evaluation moves them and
undoes it after each task; and nothing normalises with them (it is always
`training=True`, the "transductive" mode here).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from mamlpp_tf.layers import meta_call


def batch_moments(inputs):
    """Mean and biased variance over all axes but the last.

    Written out rather than `tf.nn.moments`, which stops the gradient of the
    mean inside the variance: harmless for first-order gradients, wrong for
    the second-order meta-gradients that flow through the inner loop.
    """
    axes = list(range(inputs.shape.rank - 1))
    mean = tf.reduce_mean(inputs, axis=axes)
    variance = tf.reduce_mean(tf.square(inputs - mean), axis=axes)
    return mean, variance


# Dtypes TensorFlow's fused batch norm kernels take.
_FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)


def fused_normalize(inputs, gamma, beta, epsilon):
    """Batch norm of NHWC `inputs` with batch statistics, in one fused op.

    Returns (outputs, (mean, biased variance)). Same values as normalising
    with `batch_moments`, with the exact first and second derivatives:
    FusedBatchNormV3's gradient is FusedBatchNormGradV3, whose own gradient
    TensorFlow differentiates from the full formula (mean and variance both
    depend on the inputs). Fewer, larger kernels than the written-out form:
    faster on large images (mini-ImageNet, docs/benchmarks.md). Its float32
    rounding differs from the written-out form's and depends on the CPU's
    kernels (`pytest tests/test_golden.py -s` prints both distances to the
    authors' meta-gradient; docs/fidelity.md), so it is opt-in.
    """
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, gamma, beta, epsilon=epsilon, data_format="NHWC",
        is_training=True,
    )
    # The op returns the unbiased (n - 1) variance; keep the biased one, as
    # `batch_moments` does (the running statistics apply n / (n - 1)).
    n = inputs.shape[0] * inputs.shape[1] * inputs.shape[2]
    return outputs, (mean, variance * ((n - 1.0) / n))


class PerStepBatchNorm(keras.layers.Layer):
    """Batch norm whose gamma, beta and running statistics are per step.

    Step k uses slot min(k, num_slots - 1): evaluating with more inner steps
    than were trained reuses the last trained slot.

    Args:
      num_weight_slots: rows of gamma/beta (num_inner_steps with BNWB, else 1).
      num_statistics_slots: rows of the running statistics (with BNRS:
        num_inner_steps, else 1).
      use_running_statistics: False normalises with the current batch's
        statistics in training and evaluation ("transductive", what the
        authors' code does; the running statistics are still updated and
        saved, but unused); True normalises with the running statistics
        when `training` is False ("per_step_running"), support and query
        passes alike.
      momentum: running = (1 - momentum) * running + momentum * batch
        (PyTorch's convention; the authors use 0.1).
      epsilon: added to the variance.
      fused: normalise 4-D float32/bfloat16/float16 inputs with batch
        statistics through `fused_normalize` (one fused op, same formula and
        derivatives, but less precise in float32 on CPU); other inputs use
        the written-out formula.

    Call args:
      inputs: [batch, ..., channels].
      step: Python int, the inner step (selects the slot).
      params: None, or a dict with "gamma"/"beta" [num_weight_slots, C].
      training: whether this is a meta-training forward pass.
    """

    def __init__(self, num_weight_slots: int = 1,
                 num_statistics_slots: int = 1,
                 use_running_statistics: bool = False,
                 momentum: float = 0.1, epsilon: float = 1e-5,
                 fused: bool = False, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("num_weight_slots", num_weight_slots),
                            ("num_statistics_slots", num_statistics_slots)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        self.num_weight_slots = num_weight_slots
        self.num_statistics_slots = num_statistics_slots
        self.use_running_statistics = use_running_statistics
        self.momentum = momentum
        self.epsilon = epsilon
        self.fused = fused
        self.last_moment_count = None

    @property
    def channels(self) -> int:
        if not self.built:
            raise ValueError(
                f"PerStepBatchNorm {self.name!r} is not built yet: call the "
                "model once (or build it) before asking for its channels."
            )
        return int(self.gamma.shape[-1])

    def build(self, input_shape):
        channels = input_shape[-1]
        weights_shape = (self.num_weight_slots, channels)
        stats_shape = (self.num_statistics_slots, channels)
        self.gamma = self.add_weight(
            name="gamma", shape=weights_shape, initializer="ones"
        )
        self.beta = self.add_weight(
            name="beta", shape=weights_shape, initializer="zeros"
        )
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=stats_shape, initializer="zeros",
            trainable=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=stats_shape, initializer="ones",
            trainable=False,
        )

    @staticmethod
    def _slot(step: int, num_slots: int) -> int:
        if not isinstance(step, int) or step < 0:
            raise ValueError(
                f"step must be a Python int >= 0 (it selects a per-step slot "
                f"at trace time), got {step!r}."
            )
        return min(step, num_slots - 1)

    def normalize(self, inputs, *, step: int, params=None,
                  training: bool = False):
        """Normalises `inputs`; returns (outputs, batch moments or None).

        The batch moments (mean, biased variance), each [C], come back when
        they were used, so the caller can update the running statistics.
        """
        if not self.built:  # Called directly rather than through __call__.
            self.build(inputs.shape)
        if params is None:
            params = {"gamma": self.gamma, "beta": self.beta}
        if training or not self.use_running_statistics:
            self._record_count(inputs)
        w = self._slot(step, self.num_weight_slots)
        gamma, beta = params["gamma"][w], params["beta"][w]
        if self.use_running_statistics and not training:
            s = self._slot(step, self.num_statistics_slots)
            mean = tf.cast(self.moving_mean[s], inputs.dtype)
            variance = tf.cast(self.moving_variance[s], inputs.dtype)
            moments = None
        elif self._can_fuse(inputs):
            return fused_normalize(inputs, gamma, beta, self.epsilon)
        else:
            mean, variance = batch_moments(inputs)
            moments = (mean, variance)
        scale = gamma * tf.math.rsqrt(variance + self.epsilon)
        return inputs * scale + (beta - mean * scale), moments

    def _record_count(self, inputs) -> None:
        # Static shapes only: the count weights the running variance.
        dims = inputs.shape[:-1]
        self.last_moment_count = (math.prod(dims) if dims.is_fully_defined()
                                  else None)

    def _can_fuse(self, inputs) -> bool:
        return (self.fused and inputs.shape.rank == 4
                and inputs.shape[:3].is_fully_defined()
                and inputs.dtype in _FUSED_DTYPES)

    def call(self, inputs, *, step: int | None = None, params=None,
             training=False, mask=None):
        if mask is not None:
            raise ValueError(
                f"PerStepBatchNorm {self.name!r} got a mask; masked batch "
                "statistics are not supported. Remove the Masking layer."
            )
        call = meta_call.current() if step is None else None
        if call is None:
            if step is None:
                raise ValueError(
                    f"PerStepBatchNorm {self.name!r} needs step= (a Python "
                    "int) outside a meta-model call; call the model through "
                    "MetaModel.forward(x, step=...), or pass step=."
                )
            return self.normalize(
                inputs, step=step, params=params, training=training
            )[0]
        if params is None:
            params = call.layer_params(self, ("gamma", "beta"))
        else:
            call.layers.append(self)
        outputs, moments = self.normalize(
            inputs, step=call.step, params=params, training=call.training
        )
        call.moments.append((self, moments))
        return outputs

    def update_statistics(self, step: int, mean, variance, count: int):
        """Moves slot `step`'s running statistics towards batch moments.

        Args:
          step: the inner step whose slot moves (no other slot changes).
          mean, variance: [C] batch mean and biased variance.
          count: elements per channel behind the moments, for PyTorch's
            unbiased running variance (variance * n / (n - 1)).
        """
        s = self._slot(step, self.num_statistics_slots)
        if count < 2:
            raise ValueError(
                f"count must be >= 2 for an unbiased variance, got {count}."
            )
        unbiased = variance * (count / (count - 1.0))
        mask = tf.one_hot(s, self.num_statistics_slots,
                          dtype=self.moving_mean.dtype)[:, None]
        rate = self.momentum * mask  # [slots, 1]: only slot s moves.
        dtype = self.moving_mean.dtype
        self.moving_mean.assign(
            self.moving_mean + rate * (tf.cast(mean, dtype) - self.moving_mean)
        )
        self.moving_variance.assign(
            self.moving_variance
            + rate * (tf.cast(unbiased, dtype) - self.moving_variance)
        )

    def snapshot_statistics(self):
        """A real copy of the running statistics (not an alias)."""
        return {
            "moving_mean": tf.identity(tf.convert_to_tensor(self.moving_mean)),
            "moving_variance": tf.identity(
                tf.convert_to_tensor(self.moving_variance)
            ),
        }

    def restore_statistics(self, snapshot):
        """Puts back the statistics from `snapshot_statistics`."""
        self.moving_mean.assign(snapshot["moving_mean"])
        self.moving_variance.assign(snapshot["moving_variance"])

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_weight_slots": self.num_weight_slots,
            "num_statistics_slots": self.num_statistics_slots,
            "use_running_statistics": self.use_running_statistics,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "fused": self.fused,
        }
