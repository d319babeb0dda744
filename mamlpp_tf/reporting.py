"""What a run reports: metrics.csv, TensorBoard events, progress lines.

`metrics.csv` has one row per finished epoch; a resumed run first drops
the rows of the epochs it is about to rerun, so the file never holds an
epoch twice. TensorBoard events go to `workdir/tensorboard/`.

A meta-step skipped for a non-finite loss or gradient changes nothing, so
the training loss and accuracy (per epoch, per progress line) average the
applied steps only; the skipped ones are counted instead
(`num_skipped_steps`, TensorBoard `train/num_skipped_steps`).
"""

from __future__ import annotations

import csv
import datetime
import io
import logging
import os
import pathlib
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from mamlpp_tf import schedules

log = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.csv"
METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "num_skipped_steps",
    "val_loss",
    "val_accuracy",
    "val_accuracy_ci95",
    "meta_lr",
    "seconds",
)
TENSORBOARD_DIR = "tensorboard"

# What tensorboard.summary.scalar writes, without depending on the
# tensorboard package (TensorFlow does not install it): a float32 scalar
# tagged for TensorBoard's scalars plugin.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR,
)


def write_scalar(tag: str, value) -> None:
    """Writes one scalar to the default summary writer at its step."""
    tf.summary.write(tag, tf.cast(value, tf.float32), metadata=_SCALAR_METADATA)


def _write_per_step(prefix: str, values) -> None:
    """`prefix`/step_k for each measured step (NaN: the step's query set
    was not run, see `MetaLearner(per_step_accuracy=...)`)."""
    for step, value in enumerate(values):
        if np.isfinite(value):
            write_scalar(f"{prefix}/step_{step}", value)


class MetricsCsv:
    """`workdir/metrics.csv`: one row per epoch, columns METRICS_COLUMNS."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = pathlib.Path(workdir) / METRICS_FILENAME

    def rows(self) -> list[dict]:
        """The rows written so far, values as strings."""
        if not self.path.exists():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _write(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=METRICS_COLUMNS, lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(temporary, self.path)

    def truncate(self, epoch: int) -> None:
        """Keeps the rows of epochs < `epoch` (creates the file if absent)."""
        self._write([r for r in self.rows() if int(r["epoch"]) < epoch])

    def append(self, row: dict) -> None:
        """Adds one epoch's row; `row` has exactly METRICS_COLUMNS."""
        if set(row) != set(METRICS_COLUMNS):
            raise ValueError(
                f"A metrics row needs the columns {METRICS_COLUMNS}, got "
                f"{sorted(row)}."
            )
        self._write(self.rows() + [row])


class MeanWindow:
    """Running means of the training metrics between two reports.

    Attributes:
      count: meta-steps added since the window opened.
      num_skipped: those that were skipped (`applied` False); the means
        leave them out.
    """

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._sums = {}
        self.count = 0
        self.num_skipped = 0
        self._start = time.perf_counter()

    def add(self, metrics: dict) -> None:
        """Adds one `MetaLearner.train_step` result."""
        self.count += 1
        if not metrics["applied"]:
            self.num_skipped += 1
            return
        for name in ("loss", "accuracy", "per_step_accuracy", "per_step_loss"):
            self._sums[name] = self._sums.get(name, 0.0) + np.asarray(
                metrics[name], np.float64
            )

    def pop(self) -> tuple[dict | None, float]:
        """(means over the applied steps, or None if every step was
        skipped; seconds since the window opened); opens a new window."""
        applied = self.count - self.num_skipped
        means = None
        if applied:
            means = {k: v / applied for k, v in self._sums.items()}
        seconds = time.perf_counter() - self._start
        self._reset()
        return means, seconds


def format_duration(seconds: float) -> str:
    """3725.2 -> '1:02:05'."""
    return str(datetime.timedelta(seconds=int(round(seconds))))


class Reporter:
    """Progress lines and TensorBoard scalars of a training run.

    Args:
      workdir: the run directory.
      config: the `ExperimentConfig`.
      write_events: write TensorBoard events; False on the workers of a
        multi-worker run other than the chief, which only log lines.
    """

    def __init__(
        self, workdir: str | os.PathLike, config, *, write_events: bool = True
    ):
        self._config = config
        if write_events:
            self._writer = tf.summary.create_file_writer(
                str(pathlib.Path(workdir) / TENSORBOARD_DIR)
            )
        else:
            self._writer = tf.summary.create_noop_writer()
        self._window = MeanWindow()
        self._total_steps = (
            config.learner.total_epochs * config.iterations_per_epoch
        )

    def step(
        self, metrics: dict, *, epoch: int, iteration: int, global_step: int
    ) -> None:
        """Records one meta-step; every `log_every` steps, reports.

        Args:
          metrics: what `MetaLearner.train_step` returned.
          epoch: the epoch of the step just done.
          iteration: the step's index in the epoch, counting from 1.
          global_step: meta-steps done in the whole run.
        """
        self._window.add(metrics)
        if self._window.count < self._config.log_every and (
            iteration < self._config.iterations_per_epoch
        ):
            return
        count, num_skipped = self._window.count, self._window.num_skipped
        means, seconds = self._window.pop()
        rate = count / seconds
        eta = (self._total_steps - global_step) / rate
        scores = "every step skipped"
        if means is not None:
            loss, accuracy = means["loss"], means["accuracy"]
            scores = f"loss {loss:.4f} accuracy {accuracy:.4f}"
            if num_skipped:
                scores += f" ({num_skipped} of {count} steps skipped)"
        log.info(
            "epoch %d/%d iteration %d/%d | %s | %.2f it/s | ETA %s (training "
            "steps only)",
            epoch,
            self._config.learner.total_epochs,
            iteration,
            self._config.iterations_per_epoch,
            scores,
            rate,
            format_duration(eta),
        )
        with self._writer.as_default(step=global_step):
            write_scalar("train/iterations_per_second", rate)
            if means is None:
                return
            write_scalar("train/loss", means["loss"])
            write_scalar("train/accuracy", means["accuracy"])
            _write_per_step("train/per_step_accuracy",
                            means["per_step_accuracy"])
            _write_per_step("train/per_step_loss", means["per_step_loss"])

    def epoch_end(
        self,
        learner,
        *,
        epoch: int,
        global_step: int,
        val_result,
        meta_lr: float,
        num_skipped_steps: int,
    ) -> None:
        """Validation metrics, meta lr, MSL weights, LSLR rates and the
        epoch's `num_skipped_steps` (meta-steps skipped as non-finite)."""
        learner_config = self._config.learner
        msl = schedules.step_loss_weights(
            learner_config, epoch, learner_config.num_inner_steps
        )
        with self._writer.as_default(step=global_step):
            write_scalar("val/loss", val_result.loss)
            write_scalar("val/accuracy", val_result.accuracy_mean)
            write_scalar("val/accuracy_ci95", val_result.accuracy_ci95)
            _write_per_step("val/per_step_accuracy",
                            val_result.per_step_accuracy)
            write_scalar("meta_lr", meta_lr)
            write_scalar("train/num_skipped_steps", num_skipped_steps)
            for step, value in enumerate(msl):
                write_scalar(f"msl_weights/step_{step}", value)
            if learner.inner_rates is not None:
                for name in learner.rate_names:
                    rates = np.asarray(learner.inner_rates.rates[name])
                    for step, value in enumerate(rates):
                        write_scalar(f"inner_lr/{name}/step_{step}", value)
        self._writer.flush()
        log.info(
            "epoch %d done | val loss %.4f accuracy %.4f +- %.4f | "
            "meta lr %.3g",
            epoch,
            val_result.loss,
            val_result.accuracy_mean,
            val_result.accuracy_ci95,
            meta_lr,
        )

    def close(self) -> None:
        """Flushes and closes the event file."""
        self._writer.close()
