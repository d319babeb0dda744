"""tools/query_backward_memory_table.py: its cells from literal figures, and
docs/benchmarks.md's ResNet-12 table is its printout of the committed
results/query_backward_memory records."""

import json
import pathlib

import pytest

import query_backward_memory_table as table_lib  # tools/, via conftest.py

REPO = pathlib.Path(__file__).resolve().parents[1]
DEVICE = "CPU: Test CPU (AVX2), 2 cores"


def _write(folder, name, **figures):
    (folder / f"{name}.json").write_text(json.dumps(figures))


def test_cells_say_measured_stopped_or_not_measured(tmp_path):
    _write(tmp_path, "resnet12_q15_separate_true", peak_rss_bytes=11_014e6,
           seconds_per_iteration=148.04, setup_rss_bytes=0.966e9,
           device=DEVICE)
    _write(tmp_path, "resnet12_q15_separate_false",
           memory_limit_exceeded=True, memory_limit_bytes=16e9,
           rss_bytes_when_stopped=16.02e9, device=DEVICE)
    lines = table_lib.table(tmp_path).splitlines()
    rows = {line.split(" | ")[0] + " | " + line.split(" | ")[1]: line
            for line in lines if line.startswith("| ") and " | " in line}
    flagfile = "| ResNet-12 64-160-320-640, 15 queries per class (the flagfile)"
    assert rows[f"{flagfile} | own tape (default)"].endswith(
        "| 11.01 GB | 148.0 |")
    assert rows[f"{flagfile} | outer tape (`--separate_query_backward=false`)"
                ].endswith("| over 16 GB (stopped there) | - |")
    assert rows["| ResNet-12 64-160-320-640, 3 queries per class "
                "| own tape (default)"].endswith("| not measured | - |")
    assert "first order" not in "\n".join(lines)
    assert lines[-2] == ("Resident before the first step (TensorFlow, the "
                         "model, the batch): 0.97 GB.")
    assert lines[-1] == f"Device: {DEVICE}."


def test_an_empty_folder_is_an_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no benchmark JSON files"):
        table_lib.table(tmp_path)
    assert table_lib.main(["table", str(tmp_path)]) == 2
    assert "error: no benchmark JSON files" in capsys.readouterr().err


def test_the_benchmarks_page_table_is_the_committed_records_printout():
    printed = table_lib.table(REPO / "results" / "query_backward_memory")
    assert "not measured" not in printed
    page = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    start = "## ResNet-12 and the query passes"
    part = page[page.index(start):]
    part = part[:part.index("\n## ", 1)]
    for line in printed.splitlines():
        assert line in part, line
