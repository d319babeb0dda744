"""metrics.csv rows, progress lines and their means, duration format."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from helpers import experiments
from mamlpp_tf import reporting


def _row(epoch):
    return {
        name: epoch if name == "epoch" else 0.5
        for name in reporting.METRICS_COLUMNS
    }


def test_metrics_csv_appends_rows_and_truncates_rerun_epochs(tmp_path):
    metrics = reporting.MetricsCsv(tmp_path)
    metrics.truncate(0)  # A new run: the header only.
    assert (tmp_path / "metrics.csv").read_text() == (
        ",".join(reporting.METRICS_COLUMNS) + "\n"
    )
    for epoch in range(3):
        metrics.append(_row(epoch))
    assert [r["epoch"] for r in metrics.rows()] == ["0", "1", "2"]
    metrics.truncate(1)  # Resuming in epoch 1: epochs 1 and 2 are rerun.
    assert [r["epoch"] for r in metrics.rows()] == ["0"]
    assert not list(tmp_path.glob("*.tmp"))


def test_metrics_csv_rows_need_exactly_the_columns(tmp_path):
    row = _row(0)
    del row["seconds"]
    with pytest.raises(ValueError, match="needs the columns"):
        reporting.MetricsCsv(tmp_path).append(row)


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0:00:00"),
        (59.6, "0:01:00"),
        (3725.2, "1:02:05"),
        (90000, "1 day, 1:00:00"),
    ],
)
def test_format_duration(seconds, text):
    assert reporting.format_duration(seconds) == text


def _step(loss, applied=True):
    """What MetaLearner.train_step returns, with accuracy = loss / 4."""
    return {
        "loss": np.float32(loss),
        "accuracy": np.float32(loss / 4),
        "per_step_accuracy": np.array([np.nan, loss / 4], np.float32),
        "per_step_loss": np.array([loss, loss], np.float32),
        "applied": np.bool_(applied),
    }


def test_mean_window_averages_the_applied_steps_only():
    window = reporting.MeanWindow()
    for loss, applied in [(1.0, True), (np.nan, False), (3.0, True)]:
        window.add(_step(loss, applied))
    assert (window.count, window.num_skipped) == (3, 1)
    means, _ = window.pop()
    assert means["loss"] == 2.0
    assert means["accuracy"] == 0.5
    np.testing.assert_array_equal(means["per_step_loss"], [2.0, 2.0])
    assert (window.count, window.num_skipped) == (0, 0)
    window.add(_step(np.inf, applied=False))
    assert window.pop()[0] is None


def _train_tags(workdir):
    tags = []
    for path in (workdir / "tensorboard").glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags += [(event.step, v.tag) for v in event.summary.value]
    return tags


def test_progress_lines_say_how_many_steps_were_skipped(tmp_path, caplog):
    config = experiments.tiny_config(
        tmp_path / "tfds", iterations_per_epoch=4, log_every=2
    )
    reporter = reporting.Reporter(tmp_path, config)
    steps = [(1.0, True), (np.nan, False), (np.nan, False), (np.inf, False)]
    with caplog.at_level(logging.INFO, logger="mamlpp_tf.reporting"):
        for iteration, (loss, applied) in enumerate(steps, 1):
            reporter.step(
                _step(loss, applied),
                epoch=0,
                iteration=iteration,
                global_step=iteration,
            )
    reporter.close()
    first, second = [r.getMessage() for r in caplog.records]
    assert "| loss 1.0000 accuracy 0.2500 (1 of 2 steps skipped) |" in first
    assert "| every step skipped |" in second
    # No NaN point in TensorBoard: the second window has no loss at all.
    tags = _train_tags(tmp_path)
    assert (2, "train/loss") in tags and (4, "train/loss") not in tags
    assert (4, "train/iterations_per_second") in tags
