"""MetaLearner: the model, LSLR rates, meta-optimizer and compiled steps.

It composes the pieces (backbone, inner loop, meta-step, schedules) and owns
one `tf.function` per (phase, derivative order), created once. Data,
checkpoints and the training loop live elsewhere.
"""

from __future__ import annotations

import logging
import numbers

import keras
import numpy as np
import tensorflow as tf

from mamlpp_tf import backbone as backbone_lib
from mamlpp_tf import config as config_lib
from mamlpp_tf import inner_loop
from mamlpp_tf import meta_step
from mamlpp_tf import model as model_lib
from mamlpp_tf import schedules
from mamlpp_tf import torch_adam
from mamlpp_tf.layers import InnerLearningRates

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive meta-steps had a non-finite loss or gradient."""


class MetaLearner:
    """Meta-trains a few-shot classifier with MAML / MAML++.

    The network (the backbone) is the built-in one `config.backbone` names
    ("conv4", the paper's, or "resnet12"), or one's own. Every MAML++ part
    (per-step BN weights and statistics, LSLR per layer and step, MSL, DA,
    CA, first or second order) works on any backbone that meets this
    contract (`backbone.py`):

      * `forward(x, *, step, params=None, training=False)` -> (logits
        [n, num_ways], moments): `params` None runs the variables, or a
        dict "layer/weight" -> tensor runs those fast weights; `step` (a
        Python int) selects the BN slots; `moments` holds one (mean [C],
        biased variance [C]) pair, or None, per layer of `norm_layers`.
      * `param_names()`, `named_variables()`: every trainable weight as
        "layer/weight" (-> variable), in a fixed order.
      * `adapted_param_names(adapt_bn)`: the tensors the inner loop adapts.
      * `norm_layers`: its `PerStepBatchNorm` layers, built with
        `bn_kwargs(config)`; the learner reads their channels, and their
        elements per channel from one probe pass on a support-set batch,
        to update the running statistics.
      * Keras' `variables` (checkpoints and export save them).

    `MetaModel(keras_model)` gives any Keras model whose weights live in
    meta-layers (`MetaConv2D`, `MetaDense`, `PerStepBatchNorm`; activations,
    pooling, `Add`, `Flatten` and other weightless layers as they are) this
    contract; `to_meta_model` converts a model of standard Keras layers.
    Every weight must have `config.dtype`.

    Args:
      config: the frozen `MetaLearnerConfig`.
      backbone: None for the built-in `config.backbone` or the
        constructor `config.custom_backbone` names; with
        `config.backbone == "custom"` and no `custom_backbone`, a model
        meeting the contract
        or a Keras model of meta-layers (wrapped in `MetaModel`); or a
        constructor `backbone(config) -> model`, called inside the
        strategy's scope (pass a constructor, not a model, under a
        `MirroredStrategy`). With one's own backbone, `mixed_precision`
        and `fused_batch_norm` are set on its layers by the constructor
        (`matmul_dtype=`, `fused=`), not here.
      jit_compile: compile each step (outer tape included) with XLA.
      parallel_tasks: tasks of a meta-batch in flight at once in the graph.
      strategy: a `tf.distribute.Strategy` whose scope holds the variables;
        None for the default strategy.
      mixed_precision: None, or "bfloat16" to run convolutions and matmuls
        in bfloat16; variables, fast-weight arithmetic, LSLR rates, BN
        statistics and the loss stay in `config.dtype`.
      per_step_accuracy: score the query set after every inner step, in
        training and evaluation. False (the default, and what the authors'
        code does) runs the query set only where its loss counts and
        reports NaN as the accuracy of the other steps; the meta-gradients
        and final accuracies are the same either way.
      fused_batch_norm: batch norm through TensorFlow's fused kernels
        (faster on large images, less precise in float32 on CPU; see
        `layers.per_step_batch_norm.fused_normalize`).
      separate_query_backward: in meta-training, differentiate each query
        loss on its own tape as soon as it is computed and push the
        gradients through the inner loop at the end, so that one query
        pass's activations are alive at a time instead of all of them
        (`meta_step.task_meta_gradients`). The same meta-gradients; less
        peak memory with MSL (docs/backbones.md).
        False: through the outer tape, as before 0.3.0.
    """

    def __init__(self, config: config_lib.MetaLearnerConfig, *,
                 backbone=None, jit_compile: bool = False, parallel_tasks: int = 1,
                 strategy: tf.distribute.Strategy | None = None,
                 mixed_precision: str | None = None,
                 per_step_accuracy: bool = False,
                 fused_batch_norm: bool = False,
                 separate_query_backward: bool = True):
        if mixed_precision not in (None, "bfloat16"):
            raise ValueError(
                f"mixed_precision must be None or 'bfloat16', got "
                f"{mixed_precision!r}."
            )
        if mixed_precision and config.dtype != "float32":
            raise ValueError(
                "mixed_precision='bfloat16' needs dtype='float32', got "
                f"dtype={config.dtype!r}."
            )
        self.config = config
        self.mixed_precision = mixed_precision
        self.jit_compile = jit_compile
        self.parallel_tasks = parallel_tasks
        self.per_step_accuracy = per_step_accuracy
        self.separate_query_backward = separate_query_backward
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():
            self.model = self._build_backbone(
                backbone, mixed_precision, fused_batch_norm
            )
            # Elements per channel behind each BN layer's support moments.
            self._moment_counts = backbone_lib.check_backbone(self.model,
                                                              config)
            self.adapted_names = self.model.adapted_param_names(
                config.adapt_bn_in_inner_loop
            )
            self.inner_rates = None
            if config.learn_inner_lr:
                self.inner_rates = InnerLearningRates(
                    self.adapted_names, config.num_inner_steps,
                    config.inner_lr_init, dtype=config.dtype,
                    name="inner_learning_rates",
                )
            # The authors' torch.optim.Adam update, epsilon 1e-8 included.
            self.optimizer = torch_adam.TorchAdam(
                learning_rate=schedules.meta_lr(config, 0),
                beta_1=config.adam_beta1, beta_2=config.adam_beta2,
            )
            self.optimizer.build(self.trainable_variables)
        self._functions = {}
        # Skipped meta-steps (non-finite loss or gradient): in all, and in a
        # row so far. The training loop checkpoints both, so a run that is
        # resumed keeps counting towards `max_nonfinite_steps`.
        self.num_skipped_steps = 0
        self.num_consecutive_skipped_steps = 0
        self._warned_extra_steps = False

    def _build_backbone(self, backbone, mixed_precision, fused_batch_norm):
        custom = self.config.backbone == "custom"
        if backbone is None and not custom:
            return model_lib.build_backbone(self.config, mixed_precision,
                                            fused_batch_norm)
        named = self.config.custom_backbone
        if not custom or (backbone is None) == (named is None):
            raise ValueError(
                f"config.backbone is {self.config.backbone!r}, "
                f"custom_backbone={named!r} and backbone="
                f"{'None' if backbone is None else type(backbone).__name__}"
                ": for one's own network set backbone='custom' in the "
                "config and either custom_backbone='module:function' or "
                "MetaLearner(backbone=...), not both; for a built-in "
                "network, neither."
            )
        if backbone is None:
            backbone = backbone_lib.import_constructor(named)
        if mixed_precision or fused_batch_norm:
            raise ValueError(
                "mixed_precision and fused_batch_norm apply to the built-in "
                "backbones; for one's own, build its meta-layers with "
                "matmul_dtype='bfloat16' and PerStepBatchNorm(fused=True)."
            )
        if callable(backbone) and not isinstance(backbone,
                                                 tf.Module | keras.layers.Layer):
            backbone = backbone(self.config)
        return backbone_lib.as_backbone(backbone, self.config)

    # -- Variables -----------------------------------------------------

    @property
    def network_names(self) -> list[str]:
        return self.model.param_names()

    @property
    def rate_names(self) -> list[str]:
        return list(self.adapted_names) if self.inner_rates else []

    @property
    def trainable_variables(self) -> list:
        """Network weights (incl. per-step BN gamma/beta), then LSLR rates."""
        named = self.model.named_variables()
        variables = [named[n] for n in self.network_names]
        if self.inner_rates is not None:
            variables += [self.inner_rates.rates[n] for n in self.rate_names]
        return variables

    @property
    def trainable_variable_names(self) -> list[str]:
        return ([f"network/{n}" for n in self.network_names]
                + [f"inner_lr/{n}" for n in self.rate_names])

    @property
    def moment_counts(self) -> list[int]:
        """Elements per channel behind each BN layer's support moments."""
        return list(self._moment_counts)

    @property
    def norm_layers(self):
        """The backbone's BN layers, in the order of its moments."""
        return list(self.model.norm_layers)

    def _read(self):
        """The meta-parameters and rates as tensors (read once per step)."""
        named = self.model.named_variables()
        params = {n: tf.convert_to_tensor(named[n]) for n in self.network_names}
        rates = {}
        if self.inner_rates is not None:
            rates = {n: tf.convert_to_tensor(self.inner_rates.rates[n])
                     for n in self.rate_names}
        return params, rates

    def _rate_fn(self, rates):
        if self.inner_rates is None:
            fixed = self.config.inner_lr_init
            return lambda name, step: fixed
        return lambda name, step: self.inner_rates.rate(name, step, rates)

    def _forward(self, x, step, params, training):
        return self.model.forward(tf.cast(x, self.config.dtype), step=step,
                                  params=params, training=training)

    # -- Meta-gradients and training -------------------------------------

    def _loss_weights(self, epoch: int):
        weights = None
        if self.config.multi_step_loss:
            weights = schedules.step_loss_weights(
                self.config, epoch, self.config.num_inner_steps
            )
        return None if weights is None else tf.constant(weights,
                                                        self.config.dtype)

    def _meta_gradients(self, batch, loss_weights, *, second_order: bool,
                        global_batch_size: int):
        """Loss averaged over the global meta-batch, and its gradients.

        `batch` is this replica's share of the meta-batch: its tasks' losses
        and gradients are summed and divided by the global number of tasks,
        so that summing over the replicas gives the mean over all tasks.
        """
        params, rates = self._read()
        sums = meta_step.batch_meta_gradients(
            self._forward, self._rate_fn, params, rates,
            {k: tf.cast(v, self.config.dtype) if k.endswith("_x") else v
             for k, v in batch.items()},
            num_steps=self.config.num_inner_steps,
            adapted_names=self.adapted_names, second_order=second_order,
            loss_weights=loss_weights,
            moment_channels=[norm.channels for norm in self.norm_layers],
            parallel_iterations=self.parallel_tasks,
            every_step_accuracy=self.per_step_accuracy,
            separate_query_backward=self.separate_query_backward,
        )
        loss = tf.nn.compute_average_loss(
            sums["losses"], global_batch_size=global_batch_size
        )
        # The same average for the gradients, summed over tasks in the loop.
        scale = 1.0 / global_batch_size
        grads = [sums["param_grads"][n] * scale for n in self.network_names]
        grads += [sums["rate_grads"][n] * scale for n in self.rate_names]
        return loss, grads, sums

    def _function(self, key, python_fn):
        if key not in self._functions:
            self._functions[key] = tf.function(python_fn,
                                               jit_compile=self.jit_compile)
        return self._functions[key]

    def compute_meta_gradients(self, batch, epoch: int):
        """(meta_loss, gradients aligned with `trainable_variables`).

        Nothing is updated. The loss is the mean over the tasks of each
        task's query loss, MSL-weighted while MSL is active.
        """
        meta_step.check_batch(batch, self.config)
        second_order = schedules.use_second_order(self.config, epoch)
        size = int(batch["support_x"].shape[0])

        def fn(batch, loss_weights):
            loss, grads, _ = self._meta_gradients(
                batch, loss_weights, second_order=second_order,
                global_batch_size=size,
            )
            return loss, grads

        return self._function(("gradients", second_order, size), fn)(
            batch, self._loss_weights(epoch)
        )

    def _batch_info(self, batch):
        """(local example batch, global number of tasks) of `batch`."""
        local = batch
        if isinstance(batch["support_x"], tf.distribute.DistributedValues):
            local = {k: self.strategy.experimental_local_results(v)[0]
                     for k, v in batch.items()}
            size = int(local["support_x"].shape[0])
            return local, size * self.strategy.num_replicas_in_sync
        return local, int(batch["support_x"].shape[0])

    def set_epoch(self, epoch: int) -> float:
        """Sets the meta lr for `epoch` (CA, stepped per epoch); returns it."""
        lr = schedules.meta_lr(self.config, epoch)
        self.optimizer.learning_rate.assign(lr)
        return lr

    def _reduce(self, op, value):
        return self.strategy.reduce(op, value, axis=None)

    def _own_replica_context(self):
        """The replica context of this learner's strategy, or None.

        None in a cross-replica context, and also in the default replica
        context of another strategy: the apps call their steps outside
        `strategy.scope()`, where TensorFlow reports the default strategy's
        replica context even though the batch is per-replica values of
        `self.strategy`, which only `self.strategy.run` can take apart.
        """
        replica = tf.distribute.get_replica_context()
        if replica is None or replica.strategy is not self.strategy:
            return None
        return replica

    def build_meta_step(self, second_order: bool, global_size: int,
                        optimizer=None):
        """The meta-step: the one implementation that both trainers run.

        `train_step` (the apps' loop) wraps it in a `tf.function`;
        `MamlppClassifier.train_step` (Keras `fit`) calls it inside the
        train function Keras traces. It computes the meta-gradients over
        the global meta-batch (per replica, summed), skips the update when
        the loss or a gradient is not finite, clips, applies `optimizer`
        and moves the per-step BN running statistics.

        Args:
          second_order: differentiate through the inner gradients (DA
            decides it per epoch; a static Python bool).
          global_size: tasks in the global meta-batch.
          optimizer: a built Keras optimizer over `trainable_variables`;
            None for this learner's own (`TorchAdam`).

        Returns:
          fn(batch, loss_weights) -> dict: loss, accuracy (final step),
          per_step_accuracy, per_step_loss [num_inner_steps], applied
          (bool tensor).
        """
        sum_op = tf.distribute.ReduceOp.SUM
        config = self.config
        optimizer = optimizer or self.optimizer

        def replica_fn(batch, loss_weights):
            loss, grads, sums = self._meta_gradients(
                batch, loss_weights, second_order=second_order,
                global_batch_size=global_size,
            )
            return {
                "loss": loss,
                "grads": grads,
                "accuracy_sum": tf.reduce_sum(sums["accuracy"]),
                "step_accuracy_sum": tf.reduce_sum(sums["step_accuracies"],
                                                   axis=0),
                "step_loss_sum": tf.reduce_sum(sums["step_losses"], axis=0),
                "moments": sums["moments"],
            }

        def train_fn(batch, loss_weights):
            replica = self._own_replica_context()
            if replica is None:  # Cross-replica: the apps' loop.
                out = self.strategy.run(replica_fn, args=(batch, loss_weights))
                out = tf.nest.map_structure(
                    lambda v: self._reduce(sum_op, v), out
                )
            else:  # Inside a replica: Keras' train function.
                out = replica.all_reduce(sum_op,
                                         replica_fn(batch, loss_weights))
            grads = out["grads"]
            # Checked before clipping, which would turn an Inf into +-clip
            # and let the step through.
            finite = tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(g)) for g in grads]
                + [tf.math.is_finite(out["loss"])]
            )
            if config.meta_grad_clip is not None:
                clip = config.meta_grad_clip
                num_network = len(self.network_names)
                grads = ([tf.clip_by_value(g, -clip, clip)
                          for g in grads[:num_network]] + grads[num_network:])

            def apply():
                optimizer.apply(grads, self.trainable_variables)
                self._update_bn_statistics(out["moments"], global_size)
                return tf.constant(True)

            applied = tf.cond(finite, apply, lambda: tf.constant(False))
            scale = 1.0 / global_size
            return {
                "loss": out["loss"],
                "accuracy": out["accuracy_sum"] * scale,
                "per_step_accuracy": out["step_accuracy_sum"] * scale,
                "per_step_loss": out["step_loss_sum"] * scale,
                "applied": applied,
            }

        return train_fn

    def _update_bn_statistics(self, moment_sums, num_tasks: int):
        """Moves slot k of every BN layer's running statistics (support pass
        of step k, averaged over the tasks of the global meta-batch)."""
        for step, layers in enumerate(moment_sums):
            if len(layers) != len(self.norm_layers):
                raise ValueError(
                    f"Step {step} has moments of {len(layers)} BN layers; "
                    f"the backbone has {len(self.norm_layers)}."
                )
            for norm, count, (mean_sum, var_sum) in zip(
                self.norm_layers, self._moment_counts, layers, strict=True
            ):
                norm.update_statistics(step, mean_sum / num_tasks,
                                       var_sum / num_tasks, count)

    def train_step(self, batch, epoch: int) -> dict:
        """One meta-update on `batch` at `epoch`; returns numpy metrics.

        Metrics: loss, accuracy (final step), per_step_accuracy and
        per_step_loss [num_inner_steps], applied (False when the step was
        skipped: a non-finite loss, or a non-finite meta-gradient before
        any clipping; weights, Adam state and BN statistics are then left
        as they were), meta_lr. A skipped step is counted in
        `num_skipped_steps` and `num_consecutive_skipped_steps`; reporting
        it is the caller's job (the training loop warns and logs it).

        Raises:
          NonFiniteLossError: the step made `max_nonfinite_steps` skipped
            steps in a row (`num_consecutive_skipped_steps`, which a
            restored checkpoint sets).
        """
        local, global_size = self._batch_info(batch)
        meta_step.check_batch(local, self.config)
        second_order = schedules.use_second_order(self.config, epoch)
        lr = self.set_epoch(epoch)
        fn = self._function(
            ("train", second_order, global_size),
            self.build_meta_step(second_order, global_size),
        )
        out = fn(batch, self._loss_weights(epoch))
        metrics = {k: np.asarray(v) for k, v in out.items()}
        metrics["meta_lr"] = lr
        if metrics["applied"]:
            self.num_consecutive_skipped_steps = 0
            return metrics
        self.num_skipped_steps += 1
        self.num_consecutive_skipped_steps += 1
        in_a_row = self.num_consecutive_skipped_steps
        if in_a_row >= self.config.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{in_a_row} consecutive meta-steps, the last in epoch "
                f"{epoch}, had a non-finite loss or gradient (the count "
                "carries over a resumed run); training stopped. Lower "
                "--meta_lr or --inner_lr_init, or set --meta_grad_clip, and "
                "train in a new --workdir."
            )
        return metrics

    # -- Evaluation and adaptation ---------------------------------------

    def _eval_steps(self, num_inner_steps):
        if num_inner_steps is None:
            steps = self.config.num_eval_inner_steps
        elif (isinstance(num_inner_steps, numbers.Integral)
              and not isinstance(num_inner_steps, bool)
              and num_inner_steps >= 1):
            steps = int(num_inner_steps)
        else:
            raise ValueError(
                f"num_inner_steps must be None (the config's "
                f"num_eval_inner_steps) or an int >= 1, got "
                f"{num_inner_steps!r}."
            )
        if steps > self.config.num_inner_steps and not self._warned_extra_steps:
            self._warned_extra_steps = True
            log.warning(
                "Evaluating with %d inner steps but %d were trained: steps "
                "past the last trained one reuse its BN slot and LSLR rate.",
                steps, self.config.num_inner_steps,
            )
        return steps

    def _eval_task(self, params, rates, task, num_steps):
        return inner_loop.run_inner_loop(
            self._forward, self._rate_fn(rates), params, task,
            num_steps=num_steps, adapted_names=self.adapted_names,
            second_order=False, training=False,
            every_step_accuracy=self.per_step_accuracy,
        )

    def _build_eval_fn(self, num_steps: int):
        dtype = self.config.dtype

        def replica_fn(batch):
            params, rates = self._read()
            tasks = {k: tf.cast(v, dtype) if k.endswith("_x") else v
                     for k, v in batch.items() if k in meta_step.TASK_KEYS}

            def one_task(task):
                result = self._eval_task(params, rates, task, num_steps)
                return (result.logits, result.step_losses[-1],
                        result.step_accuracies)

            num_queries = self.config.num_ways * self.config.num_queries
            return tf.map_fn(
                one_task, tasks,
                fn_output_signature=(
                    tf.TensorSpec([num_queries, self.config.num_ways], dtype),
                    tf.TensorSpec([], dtype),
                    tf.TensorSpec([num_steps], dtype),
                ),
                parallel_iterations=self.parallel_tasks,
            )

        def eval_fn(batch):
            replica = self._own_replica_context()
            if replica is not None:  # Inside a replica: Keras' functions.
                return replica.all_gather(replica_fn(batch), axis=0)
            out = self.strategy.run(replica_fn, args=(batch,))
            return tf.nest.map_structure(
                lambda v: self.strategy.gather(v, axis=0), out
            )

        return eval_fn

    def build_eval_step(self, num_inner_steps: int | None = None):
        """The evaluation protocol on a batch of tasks, untraced.

        Both trainers run it: `eval_step` (the apps) in a `tf.function`,
        `MamlppClassifier.test_step` inside Keras' test function.

        Returns:
          fn(batch) -> (query logits [tasks, ways*queries, ways], final
          query loss [tasks], per-step query accuracy [tasks, steps]).
        """
        return self._build_eval_fn(self._eval_steps(num_inner_steps))

    def eval_step(self, batch, num_inner_steps: int | None = None):
        """Adapts to each task (first order) and scores its query set.

        Returns (metrics, logits): metrics holds loss and accuracy (means
        over tasks), task_accuracy [tasks] and per_step_accuracy [steps];
        logits are the query logits [tasks, ways*queries, ways].
        """
        local, _ = self._batch_info(batch)
        meta_step.check_batch(local, self.config)
        steps = self._eval_steps(num_inner_steps)
        fn = self._function(("eval", steps), self._build_eval_fn(steps))
        logits, losses, step_accuracies = fn(batch)
        step_accuracies = step_accuracies.numpy()
        metrics = {
            "loss": float(np.mean(losses.numpy())),
            "accuracy": float(np.mean(step_accuracies[:, -1])),
            "task_accuracy": step_accuracies[:, -1],
            "per_step_accuracy": step_accuracies.mean(axis=0),
        }
        return metrics, logits.numpy()

    def adapt(self, support_x, support_y, num_inner_steps: int | None = None):
        """The fast weights of one task: dict name -> tensor (adapted only).

        The support steps of `eval_step` (`inner_loop.adapt`: first order,
        BN as at evaluation), `num_inner_steps` of them (None: the config's
        `num_eval_inner_steps`).

        Args:
          support_x: float [ways*shots, H, W, C]; support_y: int32 [ways*shots].
        """
        steps = self._eval_steps(num_inner_steps)
        params, rates = self._read()
        return inner_loop.adapt(
            self._forward, self._rate_fn(rates), params,
            tf.cast(support_x, self.config.dtype),
            tf.convert_to_tensor(support_y, tf.int32),
            num_steps=steps, adapted_names=self.adapted_names,
        )

    def predict(self, query_x, fast_weights=None,
                num_inner_steps: int | None = None):
        """Logits [n, ways] of `query_x` under fast weights (or the meta-
        weights when None), through the BN slot of the last inner step."""
        params, _ = self._read()
        step = 0
        if fast_weights is not None:
            params.update(fast_weights)
            step = self._eval_steps(num_inner_steps) - 1
        logits, _ = self._forward(query_x, step, params, False)
        return logits

    # -- BN statistics snapshots -------------------------------------------

    def snapshot_bn_statistics(self) -> list:
        """Real copies of every stage's running statistics."""
        return [norm.snapshot_statistics() for norm in self.norm_layers]

    def restore_bn_statistics(self, snapshot) -> None:
        """Restores what `snapshot_bn_statistics` returned."""
        if len(snapshot) != len(self.norm_layers):
            raise ValueError(
                f"The snapshot has {len(snapshot)} stages; the model has "
                f"{len(self.norm_layers)}."
            )
        for norm, stats in zip(self.norm_layers, snapshot, strict=True):
            norm.restore_statistics(stats)
