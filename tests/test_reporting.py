"""metrics.csv rows, and the progress line's duration format."""

import pytest

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
