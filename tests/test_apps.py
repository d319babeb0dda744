"""The three apps end to end on flags/smoke.cfg, and their bad input."""

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import apps
from helpers import experiments
from mamlpp_tf import checkpointing
from mamlpp_tf import experiment
from mamlpp_tf import learner as learner_lib
from mamlpp_tf import reporting
from mamlpp_tf import runtime_history

SMOKE = apps.FLAGS_DIR / "smoke.cfg"
TEST_SUMMARY_KEYS = {
    "test_accuracy_mean",
    "test_accuracy_ci95",
    "num_test_tasks",
    "ensemble_top_k",
    "ensemble_epochs",
    "single_best_accuracy_mean",
    "single_best_accuracy_ci95",
    "num_eval_inner_steps",
    "num_skipped_steps",
}


def _files(folder):
    return {
        p.relative_to(folder): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _wait_for(path, process, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"the app exited ({process.returncode}) before {path} appeared"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.2)


def test_smoke_run_stopped_resumed_evaluated_exported(tmp_path):
    workdir, tfds_dir = tmp_path / "run", tmp_path / "tfds"
    train = apps.command(
        "train",
        f"--flagfile={SMOKE}",
        f"--workdir={workdir}",
        f"--tfds_data_dir={tfds_dir}",
    )

    # SIGTERM once the first checkpoint exists: checkpoint, exit 143.
    process = subprocess.Popen(
        train,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=apps.REPO,
        env=apps.ENV,
    )
    try:
        _wait_for(workdir / "checkpoints" / "checkpoint", process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Stopped by SIGTERM" in stderr
    assert "Rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert not (workdir / "test_summary.json").exists()

    # The same command resumes and finishes.
    result = subprocess.run(
        train,
        capture_output=True,
        text=True,
        cwd=apps.REPO,
        env=apps.ENV,
        timeout=600,
    )
    assert result.returncode == 0, apps.describe(result)
    assert "Restored" in result.stderr
    assert "it/s | ETA" in result.stderr
    rows = (workdir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith(
        "epoch,train_loss,train_accuracy,num_skipped_steps,val_loss,"
        "val_accuracy"
    )
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "top_k" / "index.json").exists()
    summary = json.loads((workdir / "test_summary.json").read_text())
    assert TEST_SUMMARY_KEYS <= set(summary)
    assert summary["num_test_tasks"] == 20
    assert summary["ensemble_top_k"] == 2
    config = experiment.read_config(workdir)
    assert config.learner.num_inner_steps == 2  # From the flagfile.

    # Evaluation on the validation tasks, with more inner steps.
    result = apps.run(
        "evaluate",
        f"--workdir={workdir}",
        "--split=val",
        "--num_eval_inner_steps=3",
    )
    assert result.returncode == 0, apps.describe(result)
    val = json.loads((workdir / "val_summary.json").read_text())
    assert json.loads(result.stdout) == val
    assert val["num_val_tasks"] == 20 and val["num_eval_inner_steps"] == 3

    # Export. (Reloading it without mamlpp_tf is tested on real Omniglot
    # in test_omniglot_end_to_end.py, and in test_export.py.)
    export_dir = tmp_path / "exported"
    result = apps.run(
        "export", f"--workdir={workdir}", f"--export_dir={export_dir}"
    )
    assert result.returncode == 0, apps.describe(result)
    assert result.stdout.strip() == str(export_dir)
    assert (export_dir / "saved_model.pb").exists()
    metadata = json.loads(
        (export_dir / "assets.extra" / "mamlpp_export.json").read_text()
    )
    assert metadata["weights"] == "best"
    assert metadata["epoch"] == summary["single_best_epoch"]


def _refused(result, message):
    assert result.returncode != 0, apps.describe(result)
    assert message in result.stderr, apps.describe(result)
    assert "Traceback" not in result.stderr, apps.describe(result)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--no_such_flag=1"], 1, "Unknown command line flag 'no_such_flag'"),
        (
            ["--flagfile=flags/no_such_experiment.cfg"],
            1,
            "Unable to open flagfile",
        ),
        (
            [
                "--flagfile=flags/maml++_omniglot_5way_1shot.cfg",
                "--data_dir=/no/such/dir",
            ],
            2,
            "error: Omniglot data_dir '/no/such/dir' does not exist",
        ),
        (
            ["--flagfile=flags/maml_omniglot_5way_1shot.cfg", "--msl_epochs=5"],
            2,
            "error: --msl_epochs has no effect with --multi_step_loss=false",
        ),
        (
            [f"--flagfile={SMOKE}", "--strategy=tpu"],
            2,
            "error: strategy='tpu' needs the TPU's name or address",
        ),
        (
            [
                f"--flagfile={SMOKE}",
                "--strategy=mirrored",
                "--logical_cpu_devices=2",
                "--meta_batch_size=3",
                "--num_eval_tasks=3",
            ],
            2,
            "error: meta_batch_size=3 does not split over 2 replicas",
        ),
    ],
)
def test_train_refuses_bad_flags_without_touching_the_workdir(
    tmp_path, args, code, message
):
    workdir = tmp_path / "run"
    result = apps.run("train", *args, f"--workdir={workdir}", installed=False)
    _refused(result, message)
    assert result.returncode == code
    assert not workdir.exists()


def test_train_refuses_a_workdir_of_another_experiment(tmp_path):
    workdir = tmp_path / "run"
    experiment.write_config(experiments.tiny_config(tmp_path / "tfds"), workdir)
    before = _files(workdir)
    result = apps.run("train", f"--flagfile={SMOKE}", f"--workdir={workdir}")
    _refused(result, "holds a different experiment")
    assert "learner.num_ways: 2 in config.json, 5 now" in result.stderr
    assert result.returncode == 2
    assert _files(workdir) == before


@pytest.mark.parametrize("switch", ["2", "3"])
def test_train_refuses_a_da_switch_the_run_never_reaches(tmp_path, switch):
    # smoke.cfg runs 3 epochs (0..2): second order from epoch 3 or later
    # would never come, so the run is refused before anything is written.
    workdir = tmp_path / "run"
    result = apps.run(
        "train",
        f"--flagfile={SMOKE}",
        f"--workdir={workdir}",
        f"--tfds_data_dir={tmp_path / 'tfds'}",
        f"--first_order_to_second_order_epoch={switch}",
    )
    _refused(
        result,
        f"first_order_to_second_order_epoch={switch} switches to second "
        f"order at epoch {int(switch) + 1}, which a run of total_epochs=3 "
        "(epochs 0..2) never reaches",
    )
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_an_empty_workdir(tmp_path):
    result = apps.run("evaluate", f"--workdir={tmp_path}")
    _refused(result, "it is not a run directory")
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_train_runs_in_bfloat16_under_xla(tmp_path):
    # One meta-step, validation and test on 2 tasks: the flags reach the
    # learner (their numerics are checked in test_distribute.py).
    workdir = tmp_path / "run"
    result = apps.run(
        "train",
        f"--flagfile={SMOKE}",
        f"--workdir={workdir}",
        f"--tfds_data_dir={tmp_path / 'tfds'}",
        "--total_epochs=1",
        "--first_order_to_second_order_epoch=-1",  # Reached in a 1-epoch run.
        "--iterations_per_epoch=1",
        "--num_eval_tasks=2",
        "--top_k_ensemble=1",
        "--mixed_precision=bfloat16",
        "--jit_compile",
        "--parallel_tasks=2",
    )
    assert result.returncode == 0, apps.describe(result)
    [runtime] = runtime_history.read_history(workdir)
    assert runtime["mixed_precision"] == "bfloat16"
    assert runtime["jit_compile"] is True
    assert runtime["parallel_tasks"] == 2
    row = reporting.MetricsCsv(workdir).rows()[0]
    assert 0.0 < float(row["train_loss"]) < 10.0
    assert (workdir / "test_summary.json").exists()
    # Its state is float32: it restores into a plain learner.
    config = experiment.read_config(workdir)
    learner = learner_lib.MetaLearner(config.learner)
    progress = checkpointing.TrainCheckpoint(
        learner, workdir, keep=config.keep_checkpoints
    ).restore_latest()
    assert progress.epoch == 1


# -- Exit 2 only before any write; exit 1 with the traceback after --------

# A 2-epoch run of one meta-step each, second order throughout (so that
# --total_epochs=1 is a valid request of the same experiment).
SHORT_RUN = (
    f"--flagfile={SMOKE}",
    "--total_epochs=2",
    "--iterations_per_epoch=1",
    "--num_eval_tasks=2",
    "--top_k_ensemble=1",
    "--first_order_to_second_order_epoch=-1",
)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """(workdir, train flags) of a finished SHORT_RUN; copy it to change it."""
    root = tmp_path_factory.mktemp("short_run")
    args = (
        *SHORT_RUN,
        f"--workdir={root / 'run'}",
        f"--tfds_data_dir={root / 'tfds'}",
    )
    result = apps.run("train", *args)
    assert result.returncode == 0, apps.describe(result)
    return root / "run", args


def _copy(short_run, tmp_path):
    """A copy of the short run, and the train flags that point at it."""
    workdir, args = short_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return copy, [a for a in args if not a.startswith("--workdir=")] + [
        f"--workdir={copy}"
    ]


def _run_patched(app, patch, *args):
    """Runs `python scripts/<app>.py *args` after the Python code `patch`
    ran in its process (to make it fail somewhere)."""
    code = "\n".join(
        [
            "import sys",
            f"sys.path.insert(0, {str(apps.SCRIPTS_DIR)!r})",
            f"import {app} as app_module",
            patch,
            "app_module.run()",
        ]
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=apps.REPO,
        env=apps.ENV,
        check=False,
    )


def _failed(result, summary):
    """Exit 1: the traceback, then one `error:` line, the last."""
    assert result.returncode == 1, apps.describe(result)
    assert "Traceback (most recent call last)" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), apps.describe(result)
    assert summary in last, apps.describe(result)
    return last


def test_train_refuses_fewer_epochs_than_trained_without_writing(
    short_run, tmp_path
):
    workdir, args = _copy(short_run, tmp_path)
    before = _files(workdir)
    result = apps.run("train", *args, "--total_epochs=1")
    _refused(result, "has already trained 2 epochs, more than total_epochs=1")
    assert result.returncode == 2
    assert _files(workdir) == before


def test_train_fails_on_unreadable_checkpoints_naming_them(short_run, tmp_path):
    workdir, args = _copy(short_run, tmp_path)
    for data in (workdir / "checkpoints").glob("ckpt-*.data-*"):
        data.write_bytes(b"\0" * 16)
    before = _files(workdir)
    result = apps.run("train", *args)
    _failed(
        result,
        "error: UnreadableCheckpointError: None of the checkpoints in "
        f"{workdir / 'checkpoints'} can be read (ckpt-2: IndexError",
    )
    assert "ckpt-1: IndexError" in result.stderr.splitlines()[-1]
    assert "delete that folder to train this run again" in result.stderr
    assert _files(workdir) == before


# Restoring ckpt-2 fails as TF's reader fails on any C++ read error (an
# OpError with code UNKNOWN), and its index cannot be opened: an access
# problem, not a damaged checkpoint.
UNREADABLE_LATEST = """
import builtins
import tensorflow as tf
from mamlpp_tf import checkpointing

_restore = checkpointing.TrainCheckpoint._restore

def restore(self, path):
    if path.endswith("ckpt-2"):
        raise tf.errors.OpError(
            None, None, path + ".index; Permission denied", tf.errors.UNKNOWN
        )
    return _restore(self, path)

def fake_open(file, *args, **kwargs):
    if str(file).endswith("ckpt-2.index"):
        raise PermissionError(13, "Permission denied", str(file))
    return builtins.open(file, *args, **kwargs)

checkpointing.TrainCheckpoint._restore = restore
checkpointing.open = fake_open
"""


def test_train_does_not_fall_back_past_a_checkpoint_it_cannot_access(
    short_run, tmp_path
):
    workdir, args = _copy(short_run, tmp_path)
    (workdir / "test_summary.json").unlink()  # So that it would test.
    before = _files(workdir)
    result = _run_patched("train", UNREADABLE_LATEST, *args)
    last = _failed(result, "error: PermissionError: [Errno 13] Permission")
    assert f"Checkpoint {workdir / 'checkpoints' / 'ckpt-2'} was not " in last
    assert "Fix the access to it" in last
    assert "Skipped checkpoint" not in result.stderr
    assert _files(workdir) == before  # ckpt-2 is still the latest.


def test_a_damaged_top_k_index_is_a_failure_not_a_bad_request(
    short_run, tmp_path
):
    workdir, args = _copy(short_run, tmp_path)
    (workdir / "top_k" / "index.json").write_text('{"entries": [')
    (workdir / "test_summary.json").unlink()
    before = _files(workdir)
    for result in (
        apps.run("train", *args),
        apps.run("evaluate", f"--workdir={workdir}"),
    ):
        _failed(
            result,
            "error: UnreadableCheckpointError: "
            f"{workdir / 'top_k' / 'index.json'} cannot be parsed",
        )
        assert _files(workdir) == before


# The first meta-step is skipped (NaN images), the second raises a
# ValueError: an internal error, once the run has started.
FAILING_SECOND_STEP = """
from mamlpp_tf import learner

_train_step = learner.MetaLearner.train_step
_calls = []

def train_step(self, batch, epoch):
    _calls.append(epoch)
    if len(_calls) == 1:
        batch = dict(batch, support_x=batch["support_x"] * float("nan"))
    if len(_calls) == 2:
        raise ValueError("an internal error in the middle of the run")
    return _train_step(self, batch, epoch)

learner.MetaLearner.train_step = train_step
"""


def test_a_value_error_mid_run_exits_1_with_the_traceback(tmp_path):
    workdir = tmp_path / "run"
    result = _run_patched(
        "train",
        FAILING_SECOND_STEP,
        *SHORT_RUN,
        "--iterations_per_epoch=3",
        f"--workdir={workdir}",
        f"--tfds_data_dir={tmp_path / 'tfds'}",
    )
    last = _failed(
        result,
        "error: ValueError: an internal error in the middle of the run "
        "The traceback above shows where it failed: fix the cause, then "
        "rerun the same command to resume from the newest checkpoint",
    )
    assert last.count("\n") == 0
    assert (
        "Skipped the meta-step at epoch 0, iteration 1 (meta-step 1)"
        in result.stderr
    )
    assert (workdir / "config.json").exists()  # The run had started.


def test_export_refuses_a_non_empty_export_dir_without_writing(
    short_run, tmp_path
):
    workdir = short_run[0]
    export_dir = tmp_path / "exported"
    export_dir.mkdir()
    (export_dir / "keep.txt").write_text("mine")
    result = apps.run(
        "export", f"--workdir={workdir}", f"--export_dir={export_dir}"
    )
    _refused(result, "exists and is not an empty folder")
    assert result.returncode == 2
    assert _files(export_dir) == {pathlib.Path("keep.txt"): b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]


def test_re_evaluating_the_test_split_keeps_the_skipped_step_count(
    short_run, tmp_path
):
    workdir, _ = _copy(short_run, tmp_path)
    metrics = workdir / "metrics.csv"
    header, *rows = metrics.read_text().splitlines()
    column = header.split(",").index("num_skipped_steps")
    cells = rows[0].split(",")
    cells[column] = "2"  # As if epoch 0 had skipped two meta-steps.
    metrics.write_text("\n".join([header, ",".join(cells), *rows[1:]]) + "\n")
    result = apps.run("evaluate", f"--workdir={workdir}")
    assert result.returncode == 0, apps.describe(result)
    summary = json.loads((workdir / "test_summary.json").read_text())
    assert summary["num_skipped_steps"] == 2
    # An epoch trained before the column existed (empty): no total claimed.
    cells[column] = ""
    metrics.write_text("\n".join([header, ",".join(cells), *rows[1:]]) + "\n")
    result = apps.run("evaluate", f"--workdir={workdir}")
    assert result.returncode == 0, apps.describe(result)
    summary = json.loads((workdir / "test_summary.json").read_text())
    assert "num_skipped_steps" not in summary
