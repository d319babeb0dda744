"""MamlppClassifier: MAML++ as a `keras.Model` (compile / fit / evaluate).

The model wraps a `MetaLearner` and runs its code: `train_step` is one
meta-step of `MetaLearner.build_meta_step` (the apps' meta-step, applied
with the compiled Keras optimizer), `test_step` the evaluation protocol of
`MetaLearner.build_eval_step` on the batch's fixed tasks. The schedules
that depend on the epoch (MSL weights, the DA switch, cosine annealing)
follow `fit`'s epoch through `MetaSchedule`, a callback `fit` adds by
itself; the epoch reaches it from `fit`, so it survives
`keras.callbacks.BackupAndRestore`.

Data: episode batches (`mamlpp_tf.make_episodes`), dicts of
support_x float32 [T, N*K, H, W, C], support_y int32 [T, N*K],
query_x float32 [T, N*Q, H, W, C], query_y int32 [T, N*Q].
"""

from __future__ import annotations

import json
import os
import pathlib

import keras
import numpy as np
import tensorflow as tf

from mamlpp_tf import backbone as backbone_lib
from mamlpp_tf import config as config_lib
from mamlpp_tf import evaluation
from mamlpp_tf import learner as learner_lib
from mamlpp_tf import meta_step
from mamlpp_tf import schedules
from mamlpp_tf import torch_adam
from mamlpp_tf.layers import MetaConv2D
from mamlpp_tf.layers import MetaDense
from mamlpp_tf.layers import PerStepBatchNorm

PACKAGE = "mamlpp_tf"
# What a saved model needs to deserialize (a custom backbone, the optimizer).
for _cls in (torch_adam.TorchAdam, backbone_lib.MetaModel, MetaConv2D,
             MetaDense, PerStepBatchNorm):
    keras.saving.register_keras_serializable(package=PACKAGE)(_cls)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MeanCI95(keras.metrics.Metric):
    """Half-width of the normal 95% interval of a mean over tasks.

    1.96 * std / sqrt(n) with the population std (ddof=0), as
    `evaluation.ci95` (the authors' np.std), accumulated in float64.
    """

    def __init__(self, name="accuracy_ci95", **kwargs):
        super().__init__(name=name, dtype="float64", **kwargs)
        self.total = self.add_variable((), "zeros", "float64", name="total")
        self.squares = self.add_variable((), "zeros", "float64", name="squares")
        self.count = self.add_variable((), "zeros", "float64", name="count")

    def update_state(self, values, sample_weight=None):
        del sample_weight
        values = tf.cast(tf.reshape(values, [-1]), tf.float64)
        self.total.assign_add(tf.reduce_sum(values))
        self.squares.assign_add(tf.reduce_sum(tf.square(values)))
        self.count.assign_add(tf.cast(tf.size(values), tf.float64))

    def result(self):
        n = tf.maximum(self.count, 1.0)
        mean = self.total / n
        variance = tf.maximum(self.squares / n - tf.square(mean), 0.0)
        return evaluation.CI95_Z * tf.sqrt(variance) / tf.sqrt(n)


class MetaSchedule(keras.callbacks.Callback):
    """Sets MAML++'s epoch schedules at every `fit` epoch; `fit` adds it.

    on_train_begin warns if MSL outlasts the run; on_epoch_begin calls
    `MamlppClassifier.set_epoch(epoch)`; after every batch it raises
    `NonFiniteLossError` once `max_nonfinite_steps` meta-steps in a row
    were skipped.
    """

    def on_train_begin(self, logs=None):
        config_lib.warn_if_msl_outlasts_the_run(self.model.meta_config)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.set_epoch(epoch)

    def on_train_batch_end(self, batch, logs=None):
        in_a_row = int(self.model.num_consecutive_skipped_steps.numpy())
        if in_a_row >= self.model.meta_config.max_nonfinite_steps:
            raise learner_lib.NonFiniteLossError(
                f"{in_a_row} consecutive meta-steps, the last in epoch "
                f"{int(self.model.epoch.numpy())}, had a non-finite loss or "
                "gradient; training stopped. Lower the meta learning rate or "
                "inner_lr_init, or set meta_grad_clip."
            )


@keras.saving.register_keras_serializable(package=PACKAGE)
class MamlppClassifier(keras.Model):
    """A few-shot classifier meta-trained with MAML++ (or MAML) by `fit`.

    Args:
      config: the `MetaLearnerConfig` (or its dict): task shape, MAML++
        parts, schedules. `total_epochs` is the schedules' length: `fit`
        may run up to that many epochs.
      backbone: None for the built-in `config.backbone`; else (with
        `config.backbone="custom"`) a Keras model of meta-layers or plain
        Keras layers converted by `mamlpp_tf.to_meta_model`, or a
        constructor `backbone(config)`; see `MetaLearner`.
      per_step_accuracy: score the query set after every inner step.

    Call args:
      inputs: an episode batch (dict; query_y is not needed).

    Call returns:
      Query logits float [T, N*Q, N] after adapting to each task's support
      set (the evaluation protocol: `num_eval_inner_steps` first-order
      steps). `predict(episodes)` returns them for every batch.

    Example:
      >>> model = MamlppClassifier(mamlpp_tf.mamlpp(...), backbone=net)
      >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
      >>> model.fit(episodes.train, epochs=4, steps_per_epoch=100,
      ...           validation_data=episodes.val)
      >>> model.evaluate(episodes.test, return_dict=True)
      {'accuracy': ..., 'accuracy_ci95': ..., 'loss': ...}
      >>> logits = model.adapt_and_predict(support_x, support_y, query_x)
    """

    def __init__(self, config, backbone=None, *, per_step_accuracy=False,
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = config_lib.MetaLearnerConfig.from_dict(config)
        if not isinstance(config, config_lib.MetaLearnerConfig):
            raise TypeError(
                f"config must be a MetaLearnerConfig, got "
                f"{type(config).__name__}."
            )
        self.meta_config = config
        self.per_step_accuracy = per_step_accuracy
        self._backbone_arg = backbone
        self._learner = learner_lib.MetaLearner(
            config, backbone=backbone, per_step_accuracy=per_step_accuracy
        )
        self.backbone = self._learner.model
        self.inner_rates = self._learner.inner_rates
        dtype = config.dtype
        self.epoch = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False,
            name="epoch",
        )
        self.msl_weights = self.add_weight(
            shape=(config.num_inner_steps,), dtype=dtype, trainable=False,
            initializer=keras.initializers.Constant(
                schedules.step_loss_weights(config, 0, config.num_inner_steps)
            ),
            name="msl_weights",
        )
        self.num_skipped_steps = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False,
            name="num_skipped_steps",
        )
        self.num_consecutive_skipped_steps = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False,
            name="num_consecutive_skipped_steps",
        )
        self.loss_tracker = keras.metrics.Mean(name="loss", dtype=dtype)
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy",
                                                   dtype=dtype)
        self.ci95_tracker = MeanCI95(name="accuracy_ci95")
        self._second_order = schedules.use_second_order(config, 0)
        self.built = True

    # -- Keras plumbing ------------------------------------------------

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.ci95_tracker]

    def compile(self, optimizer=None, *, jit_compile=False, **kwargs):
        """Keras' compile, for MAML++: any Keras optimizer, no loss.

        Args:
          optimizer: any `keras.optimizers.Optimizer` (or its name); None
            for `mamlpp_tf.TorchAdam`, the authors' Adam (PyTorch's
            update, epsilon 1e-8) at the config's meta_lr and betas. With
            `config.cosine_annealing` the learning rate is set at every
            epoch to `schedules.meta_lr(config, epoch)` (from meta_lr to
            min_meta_lr over total_epochs), so it must be a number, not a
            schedule; without CA the optimizer's own rate (or schedule)
            is used.
          jit_compile: XLA for the train/test functions (default False).
          **kwargs: other `keras.Model.compile` arguments; `loss` and
            `metrics` are refused (the meta-loss and the protocol's
            metrics are MAML++'s own).
        """
        for name in ("loss", "metrics", "weighted_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"MamlppClassifier.compile got {name}={kwargs[name]!r}: "
                    "the meta-loss (MSL-weighted query cross-entropy) and "
                    "the metrics (loss, accuracy, accuracy_ci95) are fixed."
                )
        config = self.meta_config
        if optimizer is None:
            optimizer = torch_adam.TorchAdam(
                learning_rate=schedules.meta_lr(config, 0),
                beta_1=config.adam_beta1, beta_2=config.adam_beta2,
            )
        super().compile(optimizer=optimizer, jit_compile=jit_compile,
                        **kwargs)
        rate = getattr(self.optimizer, "_learning_rate", None)
        if config.cosine_annealing and isinstance(
            rate, keras.optimizers.schedules.LearningRateSchedule
        ):
            raise ValueError(
                f"The optimizer's learning rate is a schedule "
                f"({type(rate).__name__}) but config.cosine_annealing is on, "
                "which sets the rate every epoch. Pass a number, or build "
                "the config with cosine_annealing=False to use the schedule."
            )

    def fit(self, x=None, *args, epochs=1, callbacks=None, **kwargs):
        """Keras' fit, with `MetaSchedule` added to `callbacks`.

        Raises:
          ValueError: `epochs` > config.total_epochs (the schedules end
            there; build the config with the run's length).

        Episode streams are not shuffled by Keras (`shuffle=False` unless
        given): their tasks are random draws already.
        """
        total = self.meta_config.total_epochs
        if epochs > total:
            raise ValueError(
                f"fit(epochs={epochs}) runs past config.total_epochs="
                f"{total}, where the MSL, DA and cosine schedules end. "
                f"Build the config with total_epochs={epochs}."
            )
        callbacks = list(callbacks or [])
        if not any(isinstance(c, MetaSchedule) for c in callbacks):
            callbacks.insert(0, MetaSchedule())
        # Episodes are drawn at random already (and a stream cannot be
        # shuffled by Keras anyway).
        kwargs.setdefault("shuffle", False)
        return super().fit(x, *args, epochs=epochs, callbacks=callbacks,
                           **kwargs)

    def compile_from_config(self, config):
        """Recompiles a loaded model with its saved optimizer."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(
            optimizer=config["optimizer"],
            jit_compile=config.get("jit_compile", False),
        )
        self.optimizer.build(self.trainable_variables)

    def set_epoch(self, epoch: int) -> None:
        """Sets the MSL weights, DA order and (CA) meta lr of `epoch`.

        `MetaSchedule` calls it at every epoch of `fit`; call it yourself
        to drive `train_on_batch` by hand.
        """
        config = self.meta_config
        if not 0 <= epoch < config.total_epochs:
            raise ValueError(
                f"epoch={epoch} is outside [0, total_epochs="
                f"{config.total_epochs})."
            )
        self.epoch.assign(epoch)
        self.msl_weights.assign(
            schedules.step_loss_weights(config, epoch, config.num_inner_steps)
        )
        if config.cosine_annealing and self.optimizer is not None:
            self.optimizer.learning_rate.assign(
                schedules.meta_lr(config, epoch)
            )
        second_order = schedules.use_second_order(config, epoch)
        if second_order != self._second_order:
            # The derivative order is part of the graph: trace it anew.
            self._second_order = second_order
            self.make_train_function(force=True)

    # -- Steps -----------------------------------------------------------

    def train_step(self, data):
        """One meta-step (`MetaLearner.build_meta_step`) on `data`."""
        meta_step.check_batch(data, self.meta_config)
        # Tasks in the global meta-batch: this replica's times the replicas.
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        size = int(data["support_x"].shape[0]) * replicas
        step = self._learner.build_meta_step(self._second_order, size,
                                             self.optimizer)
        weights = None
        if self.meta_config.multi_step_loss:
            weights = tf.convert_to_tensor(self.msl_weights)
        out = step(data, weights)
        applied = out["applied"]
        skipped = tf.cast(tf.logical_not(applied), tf.int64)
        self.num_skipped_steps.assign_add(skipped)
        self.num_consecutive_skipped_steps.assign(
            (self.num_consecutive_skipped_steps + skipped) * skipped
        )
        # A skipped step's loss stays out of the means (as in the apps).
        weight = tf.cast(applied, self.meta_config.dtype)
        loss = tf.where(applied, out["loss"], tf.zeros_like(out["loss"]))
        accuracy = tf.where(applied, out["accuracy"],
                            tf.zeros_like(out["accuracy"]))
        self.loss_tracker.update_state(loss, sample_weight=weight)
        self.accuracy_tracker.update_state(accuracy, sample_weight=weight)
        return {
            "loss": self.loss_tracker.result(),
            "accuracy": self.accuracy_tracker.result(),
            "num_skipped_steps": self.num_skipped_steps,
        }

    def test_step(self, data):
        """The evaluation protocol on `data`'s tasks: loss and accuracy
        (means over all tasks seen), accuracy_ci95 (their 95% interval)."""
        meta_step.check_batch(data, self.meta_config)
        _, losses, step_accuracies = self._learner.build_eval_step()(data)
        task_accuracies = step_accuracies[:, -1]  # [tasks]
        self.loss_tracker.update_state(losses)
        self.accuracy_tracker.update_state(task_accuracies)
        self.ci95_tracker.update_state(task_accuracies)
        return {m.name: m.result() for m in self.metrics}

    def call(self, inputs, training=False):
        """Query logits [T, N*Q, N] after adapting to each support set."""
        del training  # Adaptation is the protocol's, never a train step.
        batch = dict(inputs)
        if "query_y" not in batch:  # Unused by the logits.
            n = self.meta_config.num_ways * self.meta_config.num_queries
            batch["query_y"] = tf.zeros([tf.shape(batch["query_x"])[0], n],
                                        tf.int32)
        meta_step.check_batch(batch, self.meta_config)
        logits, _, _ = self._learner.build_eval_step()(batch)
        return logits

    def predict_step(self, data):
        return self(data, training=False)

    # -- One task ----------------------------------------------------------

    def adapt_and_predict(self, support_x, support_y, query_x,
                          num_inner_steps: int | None = None):
        """Adapts to one new task and classifies its queries: one call.

        The evaluation protocol (`MetaLearner.adapt`, then the queries
        through the adapted network), as the exported SavedModel's
        `adapt_and_predict` runs it.

        Args:
          support_x: float32 [N*K, H, W, C], pixels as in the episodes.
          support_y: int [N*K] in [0, N).
          query_x: float32 [n, H, W, C].
          num_inner_steps: None for config.num_eval_inner_steps.

        Returns:
          float32 numpy logits [n, N]: column c is the support's label c.
        """
        config = self.meta_config
        support_x = np.asarray(support_x, np.float32)
        query_x = np.asarray(query_x, np.float32)
        support_y = np.asarray(support_y)
        for name, x in (("support_x", support_x), ("query_x", query_x)):
            if x.ndim != 4 or tuple(x.shape[1:]) != config.image_shape:
                raise ValueError(
                    f"{name} must be [n, *{config.image_shape}], got shape "
                    f"{x.shape}."
                )
        if support_y.shape != (support_x.shape[0],) or not np.all(
            (support_y >= 0) & (support_y < config.num_ways)
        ):
            raise ValueError(
                f"support_y must be [{support_x.shape[0]}] labels in "
                f"[0, {config.num_ways}), got {support_y!r}."
            )
        fast = self._learner.adapt(support_x, support_y.astype(np.int32),
                                   num_inner_steps)
        return np.asarray(
            self._learner.predict(query_x, fast, num_inner_steps)
        )

    @property
    def learner(self) -> learner_lib.MetaLearner:
        """The wrapped `MetaLearner` (same variables)."""
        return self._learner

    # -- Serialization ------------------------------------------------------

    def get_config(self):
        backbone = None
        if self.meta_config.backbone == "custom":
            backbone = keras.saving.serialize_keras_object(self.backbone)
        return {
            "name": self.name,
            "config": json.loads(self.meta_config.to_json()),
            "backbone": backbone,
            "per_step_accuracy": self.per_step_accuracy,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("backbone") is not None:
            config["backbone"] = keras.saving.deserialize_keras_object(
                config["backbone"]
            )
        return cls(**config)



class KeepTopK(keras.callbacks.Callback):
    """Keeps the weights of the k epochs with the best validation accuracy.

    The training half of the authors' test protocol (Antoniou et al.
    2019, Sec. 5): after `fit`, `evaluate_top_k` averages these epochs'
    query logits on the fixed test tasks. Layout: `directory/index.json`
    (entries best first; ties keep the earlier epoch) and
    `directory/epoch_XXX.weights.h5`.

    Args:
      directory: a folder for the weights.
      k: epochs kept (5 in the authors' code).
      monitor: the logged metric to rank by (higher is better).
    """

    def __init__(self, directory, k: int = 5, monitor: str = "val_accuracy"):
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}.")
        self.directory = pathlib.Path(directory)
        self.k = k
        self.monitor = monitor

    def _path(self, epoch: int) -> pathlib.Path:
        return self.directory / f"epoch_{epoch:03d}.weights.h5"

    def on_epoch_end(self, epoch, logs=None):
        if not logs or self.monitor not in logs:
            raise ValueError(
                f"KeepTopK ranks epochs by {self.monitor!r}, which the logs "
                f"lack ({sorted(logs or {})}); pass validation_data to fit."
            )
        entries = [e for e in read_top_k(self.directory)
                   if e["epoch"] != epoch]
        entries.append({"epoch": epoch, "score": float(logs[self.monitor])})
        entries.sort(key=lambda e: (-e["score"], e["epoch"]))
        kept = entries[: self.k]
        self.directory.mkdir(parents=True, exist_ok=True)
        if any(e["epoch"] == epoch for e in kept):
            self.model.save_weights(self._path(epoch))
        index = self.directory / TOP_K_INDEX
        temporary = index.with_name(index.name + ".tmp")
        temporary.write_text(json.dumps(
            {"monitor": self.monitor, "k": self.k, "entries": kept}, indent=2
        ) + "\n", encoding="utf-8")
        os.replace(temporary, index)
        names = {self._path(e["epoch"]).name for e in kept}
        for path in self.directory.glob("epoch_*.weights.h5"):
            if path.name not in names:
                path.unlink()


TOP_K_INDEX = "index.json"


def read_top_k(directory) -> list[dict]:
    """`KeepTopK`'s entries ({"epoch", "score"}, best first); [] if none."""
    path = pathlib.Path(directory) / TOP_K_INDEX
    if not path.exists():
        return []
    return json.loads(path.read_text(encoding="utf-8"))["entries"]


def evaluate_top_k(model: MamlppClassifier, directory, episodes) -> dict:
    """The authors' test protocol on `episodes`' fixed tasks.

    Loads each epoch `KeepTopK` kept into `model` (its weights are
    overwritten: the last one loaded is the worst kept epoch), adapts to
    every task, and scores the mean of the epochs' query logits.

    Args:
      model: a MamlppClassifier of the same config and backbone.
      directory: `KeepTopK`'s folder.
      episodes: a finite dataset of episode batches (e.g. `episodes.test`).

    Returns:
      test_accuracy_mean and test_accuracy_ci95 (the ensemble over
      tasks), num_test_tasks, ensemble_epochs (best first),
      single_best_accuracy_mean and single_best_accuracy_ci95.
    """
    entries = read_top_k(directory)
    if not entries:
        raise ValueError(
            f"{str(directory)!r} holds no KeepTopK epoch: fit with "
            "KeepTopK(directory) and validation_data first."
        )
    labels = np.concatenate([b["query_y"].numpy() for b in episodes])
    logits = []
    for entry in entries:
        model.load_weights(
            pathlib.Path(directory) / f"epoch_{entry['epoch']:03d}.weights.h5"
        )
        logits.append(model.predict(episodes, verbose=0))
    ensemble = evaluation.ensemble_task_accuracies(logits, labels)
    best = evaluation.ensemble_task_accuracies(logits[:1], labels)
    return {
        "test_accuracy_mean": float(np.mean(ensemble)),
        "test_accuracy_ci95": evaluation.ci95(ensemble),
        "num_test_tasks": int(ensemble.size),
        "ensemble_epochs": [e["epoch"] for e in entries],
        "single_best_accuracy_mean": float(np.mean(best)),
        "single_best_accuracy_ci95": evaluation.ci95(best),
    }
