"""The run directory's runtime history: one JSON line per start of an app.

The runtime options (strategy, XLA, bfloat16, fused batch norm, threads)
are not part of the experiment, so a run may be resumed or evaluated under
other ones, but they change the arithmetic. Every start of mamlpp-train
and of mamlpp-evaluate on a run directory appends one line to
`runtime_history.jsonl`, and no line is ever rewritten, so every number in
the directory can be traced to the options, host and versions it came from.

Run directories written before this history kept only the latest start,
in `runtime.json`; `read_history` returns it first, marked "legacy".
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import socket

import keras
import tensorflow as tf

from mamlpp_tf import cpu_quota

HISTORY_FILENAME = "runtime_history.jsonl"
# Before the history: one JSON object, rewritten at each start.
LEGACY_FILENAME = "runtime.json"
COMMANDS = ("train", "evaluate")


def _gpu_names() -> list[str]:
    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return names


def start_entry(
    command: str, runtime, strategy: tf.distribute.Strategy, **details
) -> dict:
    """What one start of `command` ran with.

    Args:
      command: "train" or "evaluate".
      runtime: the `distribute.RuntimeConfig` of this start.
      strategy: the strategy built from it.
      **details: what the command starts from (train: the epoch,
        iteration and meta-step it resumes at; evaluate: the split, inner
        steps and epochs it scores).

    Returns:
      A JSON-serialisable dict: time (UTC, ISO 8601), command, host, pid,
      the runtime options (one key each), strategy_class,
      num_replicas_in_sync, intra_op_threads_applied (0: TensorFlow's
      default), available_cpus, gpus, tensorflow_version, keras_version,
      mamlpp_tf_version, then `details`.
    """
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}.")
    import mamlpp_tf  # The package, for its version (imported by now).

    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "command": command,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **dataclasses.asdict(runtime),
        "strategy_class": type(strategy).__name__,
        "num_replicas_in_sync": strategy.num_replicas_in_sync,
        "intra_op_threads_applied": (
            tf.config.threading.get_intra_op_parallelism_threads()
        ),
        "available_cpus": cpu_quota.available_cpus(),
        "gpus": _gpu_names(),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "mamlpp_tf_version": mamlpp_tf.__version__,
        **details,
    }


def append(workdir: str | os.PathLike, entry: dict) -> pathlib.Path:
    """Appends `entry` as one line of `workdir/runtime_history.jsonl`.

    One `write` of one line in append mode: earlier lines are never
    touched, and a crash leaves at worst a partial last line (which
    `read_history` reports).
    """
    path = pathlib.Path(workdir) / HISTORY_FILENAME
    line = json.dumps(entry, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_history(workdir: str | os.PathLike) -> list[dict]:
    """Every recorded start in `workdir`, oldest first.

    A legacy `runtime.json` (the one start such directories recorded)
    comes first, with "legacy": True added.

    Raises:
      ValueError: a line is not a JSON object, naming the file and line.
    """
    workdir = pathlib.Path(workdir)
    entries = []
    legacy = workdir / LEGACY_FILENAME
    if legacy.exists():
        entries.append(
            {
                **_parse(legacy.read_text(encoding="utf-8"), legacy, 1),
                "legacy": True,
            }
        )
    path = workdir / HISTORY_FILENAME
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        entries += [
            _parse(line, path, number)
            for number, line in enumerate(lines, start=1)
            if line.strip()
        ]
    return entries


def _parse(text: str, path: pathlib.Path, line: int) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}, line {line}, is not JSON ({error}); a start was cut "
            "off mid-write? Delete that line to read the others."
        ) from error
    if not isinstance(value, dict):
        raise ValueError(
            f"{path}, line {line}, holds a {type(value).__name__}, not a "
            "JSON object."
        )
    return value
