"""Evaluation on fixed tasks: accuracy, 95% intervals, the top-k ensemble.

The authors' protocol (Antoniou et al. 2019, Sec. 5 and their code): after
training, the k epochs with the best validation accuracy each adapt to the
same fixed test tasks; their query logits are averaged per task and the
argmax of the mean is scored. The single best epoch is reported too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time

import numpy as np
import tensorflow as tf

from mamlpp_tf import checkpointing
from mamlpp_tf import data as data_lib
from mamlpp_tf import distribute
from mamlpp_tf import experiment
from mamlpp_tf import learner as learner_lib
from mamlpp_tf import reporting
from mamlpp_tf import runtime_history

log = logging.getLogger(__name__)

# A normal 95% interval: 1.96 standard errors of the mean over tasks.
CI95_Z = 1.96
SUMMARY_FILENAME = "{split}_summary.json"
EVAL_SPLITS = ("val", "test")


def ci95(values) -> float:
    """1.96 * std / sqrt(n) over `values` (float [n]).

    The population std (ddof=0), as the authors' code (np.std) uses.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"ci95 needs a non-empty 1-D array, got shape {values.shape}."
        )
    return float(CI95_Z * values.std() / np.sqrt(values.size))


def _global_numpy(strategy, value) -> np.ndarray:
    """A batch tensor as numpy: under a strategy, every replica's part, in
    replica order (the order of `MetaLearner.eval_step`'s gathered logits),
    from every worker."""
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.gather(value, axis=0).numpy()
    return np.asarray(value)


@dataclasses.dataclass(frozen=True)
class SplitResult:
    """One model on a set of fixed tasks.

    Attributes:
      loss: mean query loss over the tasks.
      task_accuracies: float [tasks], final-step query accuracy per task.
      per_step_accuracy: float [steps], mean over tasks after each step.
      logits: float [tasks, ways*queries, ways], final-step query logits.
      labels: int [tasks, ways*queries].
    """

    loss: float
    task_accuracies: np.ndarray
    per_step_accuracy: np.ndarray
    logits: np.ndarray
    labels: np.ndarray

    @property
    def accuracy_mean(self) -> float:
        """Mean over tasks of the final-step query accuracy."""
        return float(np.mean(self.task_accuracies))

    @property
    def accuracy_ci95(self) -> float:
        """Half-width of the 95% interval of `accuracy_mean`."""
        return ci95(self.task_accuracies)


def evaluate_batches(
    learner, batches, *, num_inner_steps: int | None = None
) -> SplitResult:
    """Adapts to every task of `batches` and scores its query set.

    Args:
      learner: a `MetaLearner`.
      batches: an iterable of episode batches (plain or per-replica).
      num_inner_steps: inner steps; None for the config's eval steps.
    """
    losses, accuracies, step_accuracies, logits, labels = [], [], [], [], []
    for batch in batches:
        metrics, batch_logits = learner.eval_step(batch, num_inner_steps)
        num_tasks = len(metrics["task_accuracy"])
        losses.append(metrics["loss"] * num_tasks)
        accuracies.append(metrics["task_accuracy"])
        step_accuracies.append(metrics["per_step_accuracy"] * num_tasks)
        logits.append(batch_logits)
        labels.append(_global_numpy(learner.strategy, batch["query_y"]))
    if not accuracies:
        raise ValueError("evaluate_batches got no batches.")
    task_accuracies = np.concatenate(accuracies)
    num_tasks = task_accuracies.size
    return SplitResult(
        loss=float(np.sum(losses) / num_tasks),
        task_accuracies=task_accuracies,
        per_step_accuracy=np.sum(step_accuracies, axis=0) / num_tasks,
        logits=np.concatenate(logits),
        labels=np.concatenate(labels),
    )


def ensemble_task_accuracies(
    logits: list[np.ndarray], labels: np.ndarray
) -> np.ndarray:
    """Per-task accuracy of the mean of several models' logits.

    Args:
      logits: one float [tasks, queries, ways] array per model.
      labels: int [tasks, queries].

    Returns:
      float [tasks].
    """
    if not logits:
        raise ValueError("ensemble_task_accuracies needs at least one model.")
    shapes = {np.shape(x) for x in logits}
    if len(shapes) != 1 or next(iter(shapes))[:2] != np.shape(labels):
        raise ValueError(
            f"Every model's logits must be [tasks, queries, ways] matching "
            f"labels {np.shape(labels)}; got {sorted(shapes)}."
        )
    mean_logits = np.mean(np.stack(logits), axis=0)
    hits = np.argmax(mean_logits, axis=-1) == labels
    return hits.mean(axis=-1)


def evaluate_top_k(
    learner,
    top_k: checkpointing.TopKStore,
    make_batches,
    *,
    split: str,
    num_inner_steps: int,
    top_k_ensemble: int,
    should_stop=lambda: False,
) -> dict:
    """Loads each kept epoch into `learner`, evaluates, ensembles.

    Args:
      learner: a `MetaLearner`; its weights are overwritten.
      top_k: the kept epochs.
      make_batches: () -> a fresh iterable of the split's fixed batches.
      split: "val" or "test" (names the summary's keys).
      num_inner_steps: inner steps at evaluation.
      top_k_ensemble: the configured k (reported; fewer may be kept).
      should_stop: polled between models; True aborts with None.

    Returns:
      None if stopped, else the summary: `{split}_accuracy_mean` and
      `{split}_accuracy_ci95` (the ensemble, over tasks), `num_{split}_tasks`,
      `ensemble_top_k` (configured k), `ensemble_epochs` and their
      `ensemble_val_accuracies` (best first), `single_best_epoch`,
      `single_best_accuracy_mean`/`_ci95`/`single_best_loss`,
      `per_epoch_accuracy_mean` and `num_eval_inner_steps`.

    Raises:
      ValueError: no epoch has been kept yet.
    """
    entries = top_k.entries
    if not entries:
        raise ValueError(
            f"No validated epoch in {top_k.directory}: train for at least "
            "one epoch first."
        )
    results = {}
    for entry in entries:
        if should_stop():
            return None
        start = time.perf_counter()
        top_k.load(entry.epoch)
        results[entry.epoch] = evaluate_batches(
            learner, make_batches(), num_inner_steps=num_inner_steps
        )
        log.info(
            "%s: epoch %d (val %.4f) scores %.4f +- %.4f (%.0f s).",
            split,
            entry.epoch,
            entry.val_accuracy,
            results[entry.epoch].accuracy_mean,
            results[entry.epoch].accuracy_ci95,
            time.perf_counter() - start,
        )
    best = results[entries[0].epoch]
    labels = best.labels
    ensemble = ensemble_task_accuracies(
        [results[e.epoch].logits for e in entries], labels
    )
    return {
        "split": split,
        f"{split}_accuracy_mean": float(np.mean(ensemble)),
        f"{split}_accuracy_ci95": ci95(ensemble),
        f"num_{split}_tasks": int(ensemble.size),
        "ensemble_top_k": top_k_ensemble,
        "ensemble_epochs": [e.epoch for e in entries],
        "ensemble_val_accuracies": [e.val_accuracy for e in entries],
        "single_best_epoch": entries[0].epoch,
        "single_best_accuracy_mean": best.accuracy_mean,
        "single_best_accuracy_ci95": best.accuracy_ci95,
        "single_best_loss": best.loss,
        "per_epoch_accuracy_mean": {
            str(epoch): result.accuracy_mean
            for epoch, result in results.items()
        },
        "num_eval_inner_steps": num_inner_steps,
    }


def write_summary(summary: dict, workdir: str | os.PathLike) -> pathlib.Path:
    """Writes `workdir/{split}_summary.json` atomically."""
    path = pathlib.Path(workdir) / SUMMARY_FILENAME.format(
        split=summary["split"]
    )
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def evaluate_workdir(
    workdir: str | os.PathLike,
    *,
    split: str = "test",
    num_eval_inner_steps: int | None = None,
    runtime: distribute.RuntimeConfig | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Evaluates a run directory's top-k epochs; writes the summary.

    The weights load under any strategy, whichever one trained them. Under
    a multi-worker strategy every worker evaluates and only the chief
    writes: a line in the run's runtime history (the options, host and
    epochs of this evaluation), then the summary.

    Args:
      workdir: a directory written by `train_and_evaluate`.
      split: "test" or "val".
      num_eval_inner_steps: None for the experiment's own.
      runtime: XLA, mixed precision, tasks in flight; None for defaults.
      strategy: what `distribute.make_strategy(runtime)` built; None
        builds it here.

    Returns:
      The summary, also written to `workdir/{split}_summary.json`.

    Raises:
      FileNotFoundError: `workdir` holds no experiment.
      ValueError: a bad split or step count, or no epoch validated yet.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}.")
    if num_eval_inner_steps is not None and num_eval_inner_steps < 1:
        raise ValueError(
            f"num_eval_inner_steps must be >= 1, got {num_eval_inner_steps}."
        )
    config = experiment.read_config(workdir)
    if config is None:
        raise FileNotFoundError(
            f"{str(workdir)!r} has no {experiment.CONFIG_FILENAME}: it is not "
            "a run directory. Train first: mamlpp-train --flagfile=... "
            f"--workdir={workdir}"
        )
    runtime = distribute.resolve_parallel_tasks(
        runtime or distribute.RuntimeConfig(), config.learner.image_shape
    )
    if strategy is None:
        strategy = distribute.make_strategy(runtime)
    distribute.check_meta_batch_size(strategy, config.learner.meta_batch_size)
    learner = learner_lib.MetaLearner(
        config.learner,
        strategy=strategy,
        **distribute.learner_options(runtime),
    )
    top_k = checkpointing.TopKStore(learner, workdir, k=config.top_k_ensemble)
    if not top_k.entries:
        raise ValueError(
            f"{str(workdir)!r} has no validated epoch yet (no "
            f"{checkpointing.TOP_K_DIR}/{checkpointing.TOP_K_INDEX}); train "
            "for at least one epoch first."
        )
    class_images = data_lib.load_splits(config.data)[split]
    num_inner_steps = (
        num_eval_inner_steps or config.learner.num_eval_inner_steps
    )
    if distribute.is_chief(strategy):
        runtime_history.append(
            workdir,
            runtime_history.start_entry(
                "evaluate",
                runtime,
                strategy,
                split=split,
                num_eval_inner_steps=num_inner_steps,
                epochs=[entry.epoch for entry in top_k.entries],
            ),
        )
    summary = evaluate_top_k(
        learner,
        top_k,
        lambda: distribute.episode_batches(
            strategy,
            class_images,
            config.episode_config(),
            split=split,
            num_tasks=config.num_eval_tasks,
        ),
        split=split,
        num_inner_steps=num_inner_steps,
        top_k_ensemble=config.top_k_ensemble,
    )
    if not distribute.is_chief(strategy):
        return summary
    if split == "test":
        # The training app writes the run's skipped meta-steps into the
        # test summary; a re-evaluation keeps them (from metrics.csv).
        # Epochs trained before the column existed have it empty: their
        # count is unknown, so no total is claimed then.
        counts = [
            r.get("num_skipped_steps")
            for r in reporting.MetricsCsv(workdir).rows()
        ]
        if counts and all(counts):
            summary["num_skipped_steps"] = sum(map(int, counts))
    path = write_summary(summary, workdir)
    log.info(
        "Wrote %s: %s accuracy %.4f +- %.4f (top-%d ensemble).",
        path,
        split,
        summary[f"{split}_accuracy_mean"],
        summary[f"{split}_accuracy_ci95"],
        len(summary["ensemble_epochs"]),
    )
    return summary
