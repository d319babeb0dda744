"""The runtime history: one appended line per start, never rewritten."""

import json

import pytest
import tensorflow as tf

from mamlpp_tf import distribute
from mamlpp_tf import runtime_history


def _entry(command="train", **details):
    runtime = distribute.RuntimeConfig(
        jit_compile=True, mixed_precision="bfloat16", fused_batch_norm=True
    )
    return runtime_history.start_entry(
        command, runtime, tf.distribute.get_strategy(), **details
    )


def test_a_start_records_options_host_versions_and_its_details():
    entry = _entry(start_epoch=3, start_iteration=1, start_step=31)
    assert entry["command"] == "train"
    assert (entry["jit_compile"], entry["mixed_precision"]) == (
        True,
        "bfloat16",
    )
    assert entry["fused_batch_norm"] is True
    assert entry["strategy"] == "default"
    assert entry["num_replicas_in_sync"] == 1
    assert entry["tensorflow_version"] == tf.__version__
    assert (entry["start_epoch"], entry["start_step"]) == (3, 31)
    for key in (
        "time",
        "host",
        "pid",
        "keras_version",
        "mamlpp_tf_version",
        "intra_op_threads_applied",
        "available_cpus",
        "gpus",
    ):
        assert key in entry, key
    assert entry["time"].endswith("+00:00")  # UTC.
    json.dumps(entry)  # Serialisable as it is.


def test_unknown_commands_are_refused():
    with pytest.raises(ValueError, match="command must be one of"):
        _entry("export")


def test_each_start_appends_a_line_and_leaves_the_others(tmp_path):
    first = _entry(start_step=0)
    path = runtime_history.append(tmp_path, first)
    written = path.read_bytes()
    second = _entry("evaluate", split="test", epochs=[4, 2])
    runtime_history.append(tmp_path, second)
    assert path.read_bytes().startswith(written)
    assert path.read_text().count("\n") == 2
    assert runtime_history.read_history(tmp_path) == [first, second]


def test_a_legacy_runtime_json_comes_first(tmp_path):
    legacy = {"strategy": "mirrored", "num_replicas_in_sync": 2}
    (tmp_path / "runtime.json").write_text(json.dumps(legacy, indent=2))
    entry = _entry(start_step=10)
    runtime_history.append(tmp_path, entry)
    assert runtime_history.read_history(tmp_path) == [
        {**legacy, "legacy": True},
        entry,
    ]


def test_an_empty_workdir_has_no_history(tmp_path):
    assert runtime_history.read_history(tmp_path) == []


def test_a_cut_off_line_is_named(tmp_path):
    runtime_history.append(tmp_path, _entry(start_step=0))
    with open(tmp_path / "runtime_history.jsonl", "a") as f:
        f.write('{"time": "2025-')
    with pytest.raises(ValueError, match=r"runtime_history.jsonl, line 2"):
        runtime_history.read_history(tmp_path)
