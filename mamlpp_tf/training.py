"""`train_and_evaluate`: meta-train, validate, checkpoint, test.

The run directory:

    config.json         the resolved ExperimentConfig, written before step 1
    runtime_history.jsonl  one line per start: runtime options, host,
                        versions, the meta-step it started from
    checkpoints/        ckpt-<global step>: the full training state
    top_k/              index.json and epoch_XXX/: the best epochs' weights
    metrics.csv         one row per epoch
    tensorboard/        TensorBoard events
    test_summary.json   the test protocol's result
    workers/            multi-worker runs: each other worker's checkpoints

Under a multi-worker strategy every worker runs the same steps (each takes
part in every collective) and saves its own checkpoints and top-k weights,
from which it resumes, but only the chief writes the run directory; the
others keep theirs in `workers/<task type>_<task id>/`. The runtime
(strategy, XLA, precision) is not part of the experiment: a run may be
resumed under another strategy.

Two phases: `prepare` checks the request (settings, data, workdir) and
restores the newest checkpoint, writing nothing, so a refused request
leaves the workdir as it was; `execute` writes, from config.json on.

Exact resume: the training task stream restarts at the saved task index,
the schedules are pure functions of the epoch, and the checkpoint holds the
optimizer state, so a run interrupted and resumed computes the same
meta-steps as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time

import keras
import tensorflow as tf

from mamlpp_tf import checkpointing
from mamlpp_tf import config as config_lib
from mamlpp_tf import data as data_lib
from mamlpp_tf.data import image_folder
from mamlpp_tf import distribute
from mamlpp_tf import evaluation
from mamlpp_tf import experiment
from mamlpp_tf import learner as learner_lib
from mamlpp_tf import reporting
from mamlpp_tf import runtime_history
from mamlpp_tf import stop_signals

log = logging.getLogger(__name__)

NAN = float("nan")


@dataclasses.dataclass
class _Run:
    """The pieces of one training run, built once."""

    config: experiment.ExperimentConfig
    workdir: pathlib.Path
    worker_dir: pathlib.Path
    learner: learner_lib.MetaLearner
    splits: dict
    strategy: tf.distribute.Strategy | None
    checkpoint: checkpointing.TrainCheckpoint
    top_k: checkpointing.TopKStore
    metrics: reporting.MetricsCsv | None
    reporter: reporting.Reporter
    stop: stop_signals.StopSignals

    def batches(self, split: str, **kwargs):
        return distribute.episode_batches(
            self.strategy,
            self.splits[split],
            self.config.episode_config(),
            split=split,
            **kwargs,
        )

    def eval_batches(self, split: str):
        return self.batches(split, num_tasks=self.config.num_eval_tasks)


def _step_progress(
    run: _Run, progress: checkpointing.Progress, metrics: dict, seconds: float
) -> checkpointing.Progress:
    """`progress` after one more meta-step. A skipped step (non-finite)
    counts as a step, but its loss and accuracy stay out of the sums."""
    learner, applied = run.learner, bool(metrics["applied"])
    return checkpointing.Progress(
        epoch=progress.epoch,
        iteration=progress.iteration + 1,
        next_task=progress.next_task + run.config.learner.meta_batch_size,
        num_skipped_steps=learner.num_skipped_steps,
        num_consecutive_skipped_steps=learner.num_consecutive_skipped_steps,
        num_skipped_steps_in_epoch=progress.num_skipped_steps_in_epoch
        + (not applied),
        loss_sum=progress.loss_sum + (float(metrics["loss"]) if applied else 0),
        accuracy_sum=progress.accuracy_sum
        + (float(metrics["accuracy"]) if applied else 0),
        seconds=seconds,
    )


def _warn_skipped(
    run: _Run, progress: checkpointing.Progress, global_step: int
) -> None:
    log.warning(
        "Skipped the meta-step at epoch %d, iteration %d (meta-step %d): "
        "its loss or meta-gradient is not finite, so the weights, Adam and "
        "BN statistics were left as they were. %d skipped in a row "
        "(training stops at %d), %d in this epoch, %d in all.",
        progress.epoch,
        progress.iteration,
        global_step,
        progress.num_consecutive_skipped_steps,
        run.config.learner.max_nonfinite_steps,
        progress.num_skipped_steps_in_epoch,
        progress.num_skipped_steps,
    )


def _train_epoch(
    run: _Run, progress: checkpointing.Progress, batches
) -> checkpointing.Progress:
    """Runs the rest of `progress.epoch`; returns the progress at its end."""
    config, learner = run.config, run.learner
    per_epoch = config.iterations_per_epoch
    epoch = progress.epoch
    start = time.perf_counter() - progress.seconds
    for iteration in range(progress.iteration, per_epoch):
        metrics = learner.train_step(next(batches), epoch)
        progress = _step_progress(
            run, progress, metrics, time.perf_counter() - start
        )
        global_step = epoch * per_epoch + iteration + 1
        if not metrics["applied"]:
            _warn_skipped(run, progress, global_step)
        run.reporter.step(
            metrics,
            epoch=epoch,
            iteration=iteration + 1,
            global_step=global_step,
        )
        if run.stop.signum is not None:
            run.checkpoint.save(progress, step=global_step)
            raise run.stop.interrupted(
                f"at epoch {epoch}, iteration {iteration + 1}", run.workdir
            )
        if (
            global_step % config.checkpoint_every == 0
            and iteration + 1 < per_epoch
        ):
            run.checkpoint.save(progress, step=global_step)
    return progress


def _end_epoch(
    run: _Run, progress: checkpointing.Progress
) -> checkpointing.Progress:
    """Validates, updates the top-k and the logs, checkpoints."""
    config, learner, epoch = run.config, run.learner, progress.epoch
    start = time.perf_counter()
    val = evaluation.evaluate_batches(learner, run.eval_batches("val"))
    val_seconds = time.perf_counter() - start
    run.top_k.update(
        checkpointing.TopKEntry(
            epoch=epoch, val_accuracy=val.accuracy_mean, val_loss=val.loss
        )
    )
    meta_lr = learner.set_epoch(epoch)
    per_epoch = config.iterations_per_epoch
    # Means over the applied steps (NaN if the whole epoch was skipped).
    applied = per_epoch - progress.num_skipped_steps_in_epoch
    if run.metrics is not None:
        run.metrics.append(
            {
                "epoch": epoch,
                "train_loss": progress.loss_sum / applied if applied else NAN,
                "train_accuracy": (
                    progress.accuracy_sum / applied if applied else NAN
                ),
                "num_skipped_steps": progress.num_skipped_steps_in_epoch,
                "val_loss": val.loss,
                "val_accuracy": val.accuracy_mean,
                "val_accuracy_ci95": val.accuracy_ci95,
                "meta_lr": meta_lr,
                "seconds": round(progress.seconds + val_seconds, 3),
            }
        )
    global_step = (epoch + 1) * per_epoch
    run.reporter.epoch_end(
        learner,
        epoch=epoch,
        global_step=global_step,
        val_result=val,
        meta_lr=meta_lr,
        num_skipped_steps=progress.num_skipped_steps_in_epoch,
    )
    progress = checkpointing.Progress(
        epoch=epoch + 1,
        next_task=progress.next_task,
        num_skipped_steps=progress.num_skipped_steps,
        num_consecutive_skipped_steps=progress.num_consecutive_skipped_steps,
    )
    run.checkpoint.save(progress, step=global_step)
    return progress


def _train(run: _Run, progress: checkpointing.Progress) -> None:
    """Trains from `progress` to the last epoch."""
    batches = iter(run.batches("train", start_task=progress.next_task))
    for _ in range(progress.epoch, run.config.learner.total_epochs):
        progress = _train_epoch(run, progress, batches)
        progress = _end_epoch(run, progress)
        if run.stop.signum is not None:
            raise run.stop.interrupted(
                f"after epoch {progress.epoch - 1}", run.workdir
            )


def _test(run: _Run) -> dict:
    """The top-k ensemble on the fixed test tasks; writes the summary."""
    config = run.config
    summary = evaluation.evaluate_top_k(
        run.learner,
        run.top_k,
        lambda: run.eval_batches("test"),
        split="test",
        num_inner_steps=config.learner.num_eval_inner_steps,
        top_k_ensemble=config.top_k_ensemble,
        should_stop=lambda: run.stop.signum is not None,
    )
    if summary is None:
        raise run.stop.interrupted("during the test", run.workdir)
    # Meta-steps skipped as non-finite over the whole training.
    summary["num_skipped_steps"] = run.learner.num_skipped_steps
    path = evaluation.write_summary(summary, run.worker_dir)
    log.info(
        "Test: top-%d ensemble %.4f +- %.4f, single best (epoch %d) "
        "%.4f +- %.4f over %d tasks. Wrote %s.",
        len(summary["ensemble_epochs"]),
        summary["test_accuracy_mean"],
        summary["test_accuracy_ci95"],
        summary["single_best_epoch"],
        summary["single_best_accuracy_mean"],
        summary["single_best_accuracy_ci95"],
        summary["num_test_tasks"],
        path,
    )
    if summary["num_skipped_steps"]:
        log.warning(
            "%d meta-steps of the training were skipped for a non-finite "
            "loss or meta-gradient (per epoch: num_skipped_steps in %s).",
            summary["num_skipped_steps"],
            run.workdir / reporting.METRICS_FILENAME,
        )
    return summary


def _check_workdir(
    config: experiment.ExperimentConfig, workdir: pathlib.Path
) -> experiment.ExperimentConfig | None:
    """Raises unless `workdir` is new or holds a resumable run of `config`.

    Returns the config saved in `workdir` (None for a new run).
    """
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(
            f"workdir {str(workdir)!r} exists and is not a "
            "folder; pass a folder path."
        )
    saved = experiment.read_config(workdir)
    if saved is not None:
        experiment.check_resumable(saved, config, workdir)
    return saved


def _check_schedule_kept(
    saved: experiment.ExperimentConfig | None,
    config: experiment.ExperimentConfig,
    workdir: pathlib.Path,
    progress: checkpointing.Progress,
) -> None:
    """Refuses a new total_epochs under CA once training has started.

    With cosine annealing the meta lr of every epoch depends on
    total_epochs, so changing it mid-run would rewrite the schedule of the
    epochs still to run; raising it on a finished run would re-warm the
    meta lr from min_meta_lr. Without CA nothing depends on it: the run
    is extended (or stopped earlier) as asked.
    """
    if saved is None or progress == checkpointing.Progress():
        return
    old, new = saved.learner.total_epochs, config.learner.total_epochs
    if old == new or not config.learner.cosine_annealing:
        return
    raise ValueError(
        f"{str(workdir)!r} was trained with total_epochs={old} under cosine "
        f"annealing (CA), whose meta lr at every epoch depends on "
        f"total_epochs; total_epochs={new} would "
        + (
            "re-warm the meta lr from min_meta_lr and anneal it again"
            if progress.epoch >= old
            else "change the meta lr of the epochs still to run"
        )
        + f". Rerun with --total_epochs={old} to resume this run as it "
        "was planned, or train the longer schedule from scratch in a new "
        "--workdir. (Runs with --cosine_annealing=false may change "
        "--total_epochs on resume.)"
    )


def _load_data(config: experiment.ExperimentConfig) -> dict:
    """Every split, checked against the task shape before any step (an
    image folder's before it is prepared)."""
    return data_lib.load_splits(
        config.data, episode_config=config.episode_config()
    )


def _record_start(
    config: experiment.ExperimentConfig,
    runtime: distribute.RuntimeConfig,
    strategy: tf.distribute.Strategy,
    workdir: pathlib.Path,
    progress: checkpointing.Progress,
) -> None:
    """Appends this start (runtime, host, where it resumes) to the history."""
    per_epoch = config.iterations_per_epoch
    entry = runtime_history.start_entry(
        "train",
        runtime,
        strategy,
        start_epoch=progress.epoch,
        start_iteration=progress.iteration,
        start_step=progress.epoch * per_epoch + progress.iteration,
    )
    path = runtime_history.append(workdir, entry)
    log.info("Runtime (appended to %s): %s", path, entry)


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    """A training request that `prepare` accepted; nothing written yet.

    Attributes:
      config, runtime, strategy: as passed to `train_and_evaluate`.
      workdir: the run directory; worker_dir: where this worker saves.
      learner: built, holding the restored checkpoint if any.
      splits: the loaded data, "train"/"val"/"test" -> ClassImages.
      checkpoint: the run's `TrainCheckpoint`.
      progress: where training resumes (zeros for a new run).
    """

    config: experiment.ExperimentConfig
    runtime: distribute.RuntimeConfig
    strategy: tf.distribute.Strategy
    workdir: pathlib.Path
    worker_dir: pathlib.Path
    learner: learner_lib.MetaLearner
    splits: dict
    checkpoint: checkpointing.TrainCheckpoint
    progress: checkpointing.Progress


def prepare(
    config: experiment.ExperimentConfig,
    workdir: str | os.PathLike,
    *,
    runtime: distribute.RuntimeConfig | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> PreparedRun:
    """The checks of `train_and_evaluate`: reads, writes nothing.

    Every reason to refuse the request is found here, before `execute`
    writes the first file (the TFDS cache of the data, outside the workdir,
    may be prepared). Restoring the newest checkpoint is part of it: it
    says how far the run got.

    Raises:
      ValueError: a refused request: the workdir holds another experiment
        or is not a folder, the meta-batch does not split over the
        replicas, bad data or settings, `total_epochs` below the epochs
        already trained, or a changed `total_epochs` under cosine
        annealing once training has started (it would rewrite the meta lr
        schedule; see `_check_schedule_kept`).
      FileNotFoundError: the data is missing.
      checkpointing.UnreadableCheckpointError: the workdir's checkpoints
        or top-k index cannot be read (a damaged workdir, not a bad
        request).
      OSError, tf.errors.OpError: reading the workdir failed.
    """
    runtime = distribute.resolve_parallel_tasks(
        runtime or distribute.RuntimeConfig(), config.learner.image_shape
    )
    if strategy is None:
        strategy = distribute.make_strategy(runtime)
    workdir = pathlib.Path(workdir)
    saved = _check_workdir(config, workdir)
    distribute.check_meta_batch_size(strategy, config.learner.meta_batch_size)
    splits = _load_data(config)
    keras.utils.set_random_seed(config.seed)
    learner = learner_lib.MetaLearner(
        config.learner,
        strategy=strategy,
        **distribute.learner_options(runtime),
    )
    worker_dir = distribute.worker_directory(strategy, workdir)
    checkpoint = checkpointing.TrainCheckpoint(
        learner, worker_dir, keep=config.keep_checkpoints
    )
    progress = checkpoint.restore_latest() or checkpointing.Progress()
    total = config.learner.total_epochs
    if progress.epoch > total:
        raise ValueError(
            f"{str(workdir)!r} has already trained {progress.epoch} epochs, "
            f"more than total_epochs={total}. Set --total_epochs to "
            f"{progress.epoch} or more."
        )
    _check_schedule_kept(saved, config, workdir, progress)
    config_lib.warn_if_msl_outlasts_the_run(config.learner)
    checkpointing.read_top_k_entries(worker_dir)  # Readable, or raises.
    return PreparedRun(
        config=config,
        runtime=runtime,
        strategy=strategy,
        workdir=workdir,
        worker_dir=worker_dir,
        learner=learner,
        splits=splits,
        checkpoint=checkpoint,
        progress=progress,
    )


def execute(prepared: PreparedRun) -> dict:
    """Trains and tests what `prepare` accepted: the phase that writes.

    Returns:
      The test summary (also in `workdir/test_summary.json`).

    Raises:
      stop_signals.TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was
        saved.
      NonFiniteLossError: `max_nonfinite_steps` skipped meta-steps in a
        row.
    """
    p = prepared
    config, workdir, worker_dir = p.config, p.workdir, p.worker_dir
    runtime, strategy, splits = p.runtime, p.strategy, p.splits
    learner, checkpoint, progress = p.learner, p.checkpoint, p.progress
    total = config.learner.total_epochs
    summary_path = worker_dir / evaluation.SUMMARY_FILENAME.format(split="test")
    if progress.epoch == total and summary_path.exists():
        log.info(
            "%s has finished training and testing; see %s.",
            workdir,
            summary_path,
        )
        return json.loads(summary_path.read_text(encoding="utf-8"))
    chief = distribute.is_chief(strategy)
    if chief:
        experiment.write_config(config, workdir)
        log.info(
            "Experiment config (in %s):\n%s",
            workdir / "config.json",
            config.to_json(),
        )
        if config.data.dataset == "image_folder":
            image_folder.write_class_split(
                config.data,
                {s: images.class_names for s, images in splits.items()},
                workdir,
            )
        _record_start(config, runtime, strategy, workdir, progress)
    top_k = checkpointing.TopKStore(
        learner, worker_dir, k=config.top_k_ensemble
    )
    top_k.discard_from(progress.epoch)
    metrics = None
    if chief:
        metrics = reporting.MetricsCsv(workdir)
        metrics.truncate(progress.epoch)
    reporter = reporting.Reporter(workdir, config, write_events=chief)
    try:
        with stop_signals.StopSignals() as stop:
            run = _Run(
                config,
                workdir,
                worker_dir,
                learner,
                splits,
                strategy,
                checkpoint,
                top_k,
                metrics,
                reporter,
                stop,
            )
            if progress.epoch < total:
                log.info(
                    "Training from epoch %d, iteration %d.",
                    progress.epoch,
                    progress.iteration,
                )
                _train(run, progress)
            return _test(run)
    finally:
        reporter.close()


def train_and_evaluate(
    config: experiment.ExperimentConfig,
    workdir: str | os.PathLike,
    *,
    runtime: distribute.RuntimeConfig | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Trains `config` in `workdir`, then runs the test protocol.

    `execute(prepare(...))`: every check, then the first write. A workdir
    holding checkpoints resumes from the newest readable one; a finished
    run only writes its test summary if that is missing, and nothing else.

    Args:
      config: the experiment.
      workdir: the run directory (created if needed).
      runtime: where and how the steps run (XLA, mixed precision, tasks in
        flight); None for the defaults. It changes no result beyond
        rounding, so it is not part of the experiment.
      strategy: the `tf.distribute.Strategy` that
        `distribute.make_strategy(runtime)` built (apps build it before any
        TensorFlow op runs, as logical devices require); None builds it
        here. With several replicas every global batch is split across
        them.

    Returns:
      The test summary (also in `workdir/test_summary.json`).

    Raises:
      ValueError, FileNotFoundError: a refused request (`prepare`);
        nothing was written.
      checkpointing.UnreadableCheckpointError, OSError: the workdir
        cannot be read (`prepare`); nothing was written.
      stop_signals.TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was
        saved.
      NonFiniteLossError: training diverged.
    """
    return execute(prepare(config, workdir, runtime=runtime, strategy=strategy))
