"""The three apps end to end on flags/smoke.cfg, and their bad input."""

import json
import signal
import subprocess
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
