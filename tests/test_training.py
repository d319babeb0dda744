"""train_and_evaluate: the run directory, exact resume, signals, refusals."""

import csv
import dataclasses
import json
import logging
import shutil
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import experiments
from mamlpp_tf import checkpointing
from mamlpp_tf import learner as learner_lib
from mamlpp_tf import runtime_history
from mamlpp_tf import stop_signals
from mamlpp_tf import training


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def config(tfds_dir):
    return experiments.tiny_config(tfds_dir)


@pytest.fixture(scope="module")
def finished(config, tmp_path_factory):
    """(workdir, summary) of an uninterrupted run."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, training.train_and_evaluate(config, workdir)


def _final_state(config, workdir):
    """(progress, every variable) of the newest checkpoint in `workdir`."""
    learner = learner_lib.MetaLearner(config.learner)
    progress = checkpointing.TrainCheckpoint(
        learner, workdir, keep=config.keep_checkpoints
    ).restore_latest()
    variables = (
        learner.model.variables
        + learner.inner_rates.variables
        + learner.optimizer.variables
    )
    return progress, [np.array(v) for v in variables]


def _metrics(workdir):
    """metrics.csv without the wall-clock column."""
    with open(workdir / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in row.items() if k != "seconds"}
            for row in csv.DictReader(f)
        ]


def _files(workdir):
    return {
        p.relative_to(workdir): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if p.is_file()
    }


def _fail_at_step(monkeypatch, step, fail):
    """Calls `fail()` right after the `step`-th meta-step has run."""
    original = learner_lib.MetaLearner.train_step
    calls = []

    def train_step(self, batch, epoch):
        metrics = original(self, batch, epoch)
        calls.append(epoch)
        if len(calls) == step:
            fail()
        return metrics

    monkeypatch.setattr(learner_lib.MetaLearner, "train_step", train_step)


class _Killed(Exception):
    """Stands in for SIGKILL: the process ends without checkpointing."""


def _kill():
    raise _Killed


def test_the_run_directory_holds_what_the_readme_lists(config, finished):
    workdir, summary = finished
    names = sorted(p.name for p in workdir.iterdir())
    assert names == experiments.RUN_DIRECTORY_ENTRIES
    rows = _metrics(workdir)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert summary["num_test_tasks"] == config.num_eval_tasks
    assert summary["ensemble_epochs"] and summary["num_eval_inner_steps"] == 2
    # 3 meta-steps per epoch, checkpoint_every=2: steps 2, 3, 4, 6 saved
    # (step 6 is the end), keep_checkpoints=3 keeps the newest three.
    assert sorted(
        p.name for p in (workdir / "checkpoints").glob("*.index")
    ) == ["ckpt-3.index", "ckpt-4.index", "ckpt-6.index"]


def test_tensorboard_gets_losses_rates_msl_weights_and_meta_lr(finished):
    workdir = finished[0]
    tags = set()
    for path in (workdir / "tensorboard").glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    for tag in (
        "train/loss",
        "train/accuracy",
        "train/per_step_accuracy/step_1",
        "val/accuracy",
        "val/per_step_accuracy/step_1",  # the final step
        "meta_lr",
        "msl_weights/step_0",
        "inner_lr/conv0/kernel/step_1",
        "inner_lr/dense/bias/step_0",
    ):
        assert tag in tags
    # Evaluation scores the query set after the final step only (the
    # default, per_step_accuracy=False): no NaN scalars for the others.
    assert "val/per_step_accuracy/step_0" not in tags


def test_killed_and_stopped_run_ends_like_the_uninterrupted_run(
    config, finished, tmp_path, monkeypatch
):
    # 3 meta-steps per epoch, checkpoints after steps 2, 3 (epoch end), 4.
    # Step 3 runs, then the process dies before checkpointing it: the
    # rerun restarts from step 2 and redoes step 3.
    _fail_at_step(monkeypatch, 3, _kill)
    with pytest.raises(_Killed):
        training.train_and_evaluate(config, tmp_path)
    progress, _ = _final_state(config, tmp_path)
    assert (progress.epoch, progress.iteration) == (0, 2)

    # The rerun gets SIGTERM during its 2nd step (step 4, epoch 1): it
    # finishes that step, checkpoints it and stops.
    monkeypatch.undo()
    handler_before = signal.getsignal(signal.SIGTERM)
    _fail_at_step(monkeypatch, 2, lambda: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(
        stop_signals.TrainingInterrupted,
        match="Stopped by SIGTERM at epoch 1, iteration 1; "
        ".*Rerun the same command",
    ) as stopped:
        training.train_and_evaluate(config, tmp_path)
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler_before
    progress, _ = _final_state(config, tmp_path)
    assert (progress.epoch, progress.iteration, progress.next_task) == (1, 1, 8)
    assert not (tmp_path / "test_summary.json").exists()

    monkeypatch.undo()
    summary = training.train_and_evaluate(config, tmp_path)

    _assert_same_run(config, finished, tmp_path, summary)
    # One history line per start, each with the meta-step it started from.
    history = runtime_history.read_history(tmp_path)
    assert [
        (e["command"], e["start_epoch"], e["start_iteration"], e["start_step"])
        for e in history
    ] == [("train", 0, 0, 0), ("train", 0, 2, 2), ("train", 1, 1, 4)]


def _assert_same_run(config, finished, workdir, summary):
    reference_dir, reference_summary = finished
    progress, state = _final_state(config, workdir)
    reference_progress, reference_state = _final_state(config, reference_dir)
    assert dataclasses.replace(progress, seconds=0) == dataclasses.replace(
        reference_progress, seconds=0
    )
    for got, want in zip(state, reference_state, strict=True):
        np.testing.assert_array_equal(got, want)
    assert _metrics(workdir) == _metrics(reference_dir)
    assert summary == reference_summary


def test_rerunning_a_finished_run_returns_its_summary(config, finished):
    workdir, summary = finished
    before = _files(workdir)
    assert training.train_and_evaluate(config, workdir) == summary
    assert _files(workdir) == before  # Nothing is written.


def test_an_incompatible_workdir_is_refused_and_left_untouched(
    config, finished
):
    workdir = finished[0]
    before = _files(workdir)
    other = dataclasses.replace(
        config,
        learner=experiments.tiny_learner(
            num_inner_steps=3, num_eval_inner_steps=3
        ),
    )
    with pytest.raises(
        ValueError,
        match="holds a different experiment: "
        "learner.num_eval_inner_steps: 2 in "
        "config.json, 3 now",
    ):
        training.train_and_evaluate(other, workdir)
    assert _files(workdir) == before


def test_raising_total_epochs_of_a_finished_run_under_ca_is_refused(
    config, finished
):
    # With CA the meta lr of every epoch depends on total_epochs: raising
    # it on a finished run would re-warm the meta lr without a word.
    workdir = finished[0]
    before = _files(workdir)
    longer = dataclasses.replace(
        config, learner=dataclasses.replace(config.learner, total_epochs=3)
    )
    with pytest.raises(
        ValueError,
        match=r"was trained with total_epochs=2 under cosine annealing "
        r"\(CA\).*total_epochs=3 would re-warm the meta lr from "
        r"min_meta_lr and anneal it again\. Rerun with "
        r"--total_epochs=2 to resume this run as it was planned, or train "
        r"the longer schedule from scratch in a new --workdir",
    ):
        training.train_and_evaluate(longer, workdir)
    assert _files(workdir) == before


@pytest.fixture(scope="module")
def second_order_run(config, tmp_path_factory):
    """(config, workdir) of a finished run that is second order from epoch
    0, so that total_epochs=1 is a valid config of it."""
    config = dataclasses.replace(
        config,
        learner=dataclasses.replace(
            config.learner, first_order_to_second_order_epoch=-1
        ),
    )
    workdir = tmp_path_factory.mktemp("second_order")
    training.train_and_evaluate(config, workdir)
    return config, workdir


def _back_to_mid_epoch(workdir):
    """Drops the newest checkpoint (the end of epoch 1) so that the run
    stands at epoch 1, iteration 1, as if killed there."""
    checkpoints = workdir / "checkpoints"
    paths = checkpointing.checkpoint_paths(workdir)
    for file in checkpoints.glob(paths[-1].rsplit("/", 1)[1] + ".*"):
        file.unlink()
    tf.compat.v1.train.update_checkpoint_state(
        str(checkpoints),
        paths[-2],
        all_model_checkpoint_paths=paths[:-1],
        # Newer than the manager's last_preserved_timestamp (else unlisted).
        all_model_checkpoint_timestamps=[time.time()] * len(paths[:-1]),
    )


@pytest.mark.parametrize("total_epochs", [1, 4])
def test_a_new_total_epochs_mid_run_under_ca_is_refused(
    second_order_run, tmp_path, total_epochs
):
    config, finished_dir = second_order_run
    workdir = tmp_path / "run"
    shutil.copytree(finished_dir, workdir)
    _back_to_mid_epoch(workdir)
    before = _files(workdir)
    other = dataclasses.replace(
        config,
        learner=dataclasses.replace(config.learner, total_epochs=total_epochs),
    )
    with pytest.raises(
        ValueError, match="would change the meta lr of the epochs still to run"
    ):
        training.train_and_evaluate(other, workdir)
    assert _files(workdir) == before
    # The same request with the planned total_epochs resumes mid-epoch.
    assert training.prepare(config, workdir).progress.iteration == 1


def test_raising_total_epochs_extends_a_finished_run_without_ca(
    config, tmp_path
):
    constant = dataclasses.replace(
        config,
        learner=dataclasses.replace(config.learner, cosine_annealing=False),
    )
    first = tmp_path / "first"
    training.train_and_evaluate(constant, first)
    workdir = tmp_path / "run"
    shutil.copytree(first, workdir)
    longer = dataclasses.replace(
        constant,
        learner=dataclasses.replace(constant.learner, total_epochs=3),
    )
    summary = training.train_and_evaluate(longer, workdir)
    assert [r["epoch"] for r in _metrics(workdir)] == ["0", "1", "2"]
    assert _metrics(workdir)[:2] == _metrics(first)
    assert {r["meta_lr"] for r in _metrics(workdir)} == {"0.001"}
    progress, _ = _final_state(longer, workdir)
    assert progress.epoch == 3
    assert set(summary["ensemble_epochs"]) <= {0, 1, 2}


def test_total_epochs_below_the_trained_ones_is_refused_before_any_write(
    second_order_run,
):
    config, workdir = second_order_run
    before = _files(workdir)
    shorter = dataclasses.replace(
        config, learner=dataclasses.replace(config.learner, total_epochs=1)
    )
    with pytest.raises(
        ValueError,
        match="has already trained 2 epochs, more than total_epochs=1",
    ):
        training.train_and_evaluate(shorter, workdir)
    assert _files(workdir) == before


def test_an_io_error_while_restoring_stops_the_run_before_any_write(
    config, finished, tmp_path, monkeypatch
):
    # Not a reason to fall back to an older checkpoint (whose successors
    # the next saves would then rotate away): raised, nothing written.
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    before = _files(workdir)
    original = checkpointing.TrainCheckpoint._restore

    def restore(self, path):
        if path.endswith("ckpt-6"):
            raise tf.errors.UnavailableError(None, None, "storage is down")
        return original(self, path)

    monkeypatch.setattr(checkpointing.TrainCheckpoint, "_restore", restore)
    with pytest.raises(tf.errors.UnavailableError):
        training.train_and_evaluate(config, workdir)
    assert _files(workdir) == before


def _skip_steps(monkeypatch, calls_to_skip, *, kill_after=None):
    """Feeds NaN images to the meta-steps numbered `calls_to_skip` (from 1,
    in this process), so that they are skipped; raises _Killed right after
    call `kill_after`. Returns [(epoch, metrics)] of every call."""
    original = learner_lib.MetaLearner.train_step
    calls = []

    def train_step(self, batch, epoch):
        if len(calls) + 1 in calls_to_skip:
            batch = dict(batch, support_x=batch["support_x"] * np.nan)
        metrics = original(self, batch, epoch)
        calls.append((epoch, metrics))
        if len(calls) == kill_after:
            raise _Killed
        return metrics

    monkeypatch.setattr(learner_lib.MetaLearner, "train_step", train_step)
    return calls


def _scalars(workdir, tag):
    """{step: value} of a TensorBoard scalar."""
    values = {}
    for path in (workdir / "tensorboard").glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_a_skipped_step_is_counted_warned_and_left_out_of_the_means(
    config, tmp_path, monkeypatch, caplog
):
    calls = _skip_steps(monkeypatch, {2})
    with caplog.at_level(logging.WARNING, logger="mamlpp_tf.training"):
        summary = training.train_and_evaluate(config, tmp_path)

    assert [bool(m["applied"]) for _, m in calls] == [
        True,
        False,
        True,
        True,
        True,
        True,
    ]
    assert not np.isfinite(calls[1][1]["loss"])
    # metrics.csv: the epoch's count, and means over the applied steps.
    rows = _metrics(tmp_path)
    assert [r["num_skipped_steps"] for r in rows] == ["1", "0"]
    applied = [m for _, m in calls[:3] if m["applied"]]
    assert float(rows[0]["train_loss"]) == (
        sum(float(m["loss"]) for m in applied) / 2
    )
    assert float(rows[0]["train_accuracy"]) == (
        sum(float(m["accuracy"]) for m in applied) / 2
    )
    assert _scalars(tmp_path, "train/num_skipped_steps") == {3: 1.0, 6: 0.0}
    assert np.isfinite(list(_scalars(tmp_path, "train/loss").values())).all()
    # The run's total, in the summary and its file.
    assert summary["num_skipped_steps"] == 1
    written = json.loads((tmp_path / "test_summary.json").read_text())
    assert written["num_skipped_steps"] == 1
    # The console.
    assert (
        "Skipped the meta-step at epoch 0, iteration 2 (meta-step 2): its "
        "loss or meta-gradient is not finite" in caplog.text
    )
    assert "1 skipped in a row (training stops at 10)" in caplog.text
    assert "1 meta-steps of the training were skipped" in caplog.text


def test_the_skipped_steps_in_a_row_survive_a_crash_and_resume(
    config, tmp_path, monkeypatch
):
    # max_nonfinite_steps=3; 5 meta-steps per epoch, checkpoints after
    # steps 2 and 4. Steps 2 and 3 are skipped, then the process dies
    # before checkpointing step 3: ckpt-2 holds 1 skipped step in a row.
    config = dataclasses.replace(
        config,
        iterations_per_epoch=5,
        learner=dataclasses.replace(config.learner, max_nonfinite_steps=3),
    )
    _skip_steps(monkeypatch, {2, 3}, kill_after=3)
    with pytest.raises(_Killed):
        training.train_and_evaluate(config, tmp_path)
    progress, _ = _final_state(config, tmp_path)
    assert (progress.iteration, progress.num_consecutive_skipped_steps) == (
        2,
        1,
    )

    # The resumed run redoes step 3 (skipped: 2 in a row) and skips step 4:
    # the 3rd in a row stops it, as it would have stopped a run that never
    # crashed. (Counting from 0 again, step 5 would have run.)
    monkeypatch.undo()
    _skip_steps(monkeypatch, {1, 2})
    with pytest.raises(
        learner_lib.NonFiniteLossError,
        match="^3 consecutive meta-steps, the last in epoch 0,",
    ):
        training.train_and_evaluate(config, tmp_path)


def test_msl_longer_than_the_run_is_logged_as_a_warning(
    config, tmp_path, caplog
):
    # CPU-budget runs do this on purpose; it is never silent.
    longer_msl = dataclasses.replace(
        config, learner=dataclasses.replace(config.learner, msl_epochs=5)
    )
    with caplog.at_level(logging.WARNING):
        training.prepare(longer_msl, tmp_path / "run")
    assert "msl_epochs=5 is longer than the run (total_epochs=2)" in caplog.text
    assert not (tmp_path / "run").exists()
