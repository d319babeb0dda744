"""TrainCheckpoint and TopKStore: what they save, restore and keep."""

import builtins
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import experiments
from mamlpp_tf import checkpointing
from mamlpp_tf import learner as learner_lib


def _learner(seed, **overrides):
    keras.utils.set_random_seed(seed)
    return learner_lib.MetaLearner(experiments.tiny_learner(**overrides))


def _state(learner):
    """Every variable a resumed run depends on, as numpy arrays."""
    variables = (
        learner.model.variables
        + learner.inner_rates.variables
        + learner.optimizer.variables
    )
    return [np.array(v) for v in variables]


def _perturb(learner, seed):
    """Moves every variable (BN statistics and Adam moments included)."""
    rng = np.random.default_rng(seed)
    for v in (
        learner.model.variables
        + learner.inner_rates.variables
        + learner.optimizer.variables
    ):
        v.assign(np.asarray(v) + rng.normal(size=v.shape).astype(v.dtype))


def _assert_same_state(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_restore_brings_back_every_variable_and_the_progress(tmp_path):
    saved = _learner(seed=0)
    _perturb(saved, seed=1)
    progress = checkpointing.Progress(
        epoch=3,
        iteration=7,
        next_task=124,
        num_skipped_steps=5,
        num_consecutive_skipped_steps=2,
        num_skipped_steps_in_epoch=3,
        loss_sum=1.5,
        accuracy_sum=0.25,
        seconds=9.5,
    )
    checkpointing.TrainCheckpoint(saved, tmp_path, keep=2).save(
        progress, step=31
    )

    fresh = _learner(seed=5)  # Other initial weights, zero BN statistics.
    restored = checkpointing.TrainCheckpoint(
        fresh, tmp_path, keep=2
    ).restore_latest()

    assert restored == progress
    assert fresh.num_skipped_steps == 5
    assert fresh.num_consecutive_skipped_steps == 2
    _assert_same_state(_state(fresh), _state(saved))


def _nan_batch(config):
    """A meta-batch whose support images are NaN: its step is skipped."""
    tasks, ways = config.meta_batch_size, config.num_ways
    shots, queries = config.num_shots, config.num_queries

    def labels(per_class):  # int32 [tasks, ways * per_class]
        row = np.repeat(np.arange(ways, dtype=np.int32), per_class)
        return np.tile(row, (tasks, 1))

    def images(per_class, value):  # float32 [tasks, ways * per_class, ...]
        shape = (tasks, ways * per_class, *config.image_shape)
        return np.full(shape, value, np.float32)

    return {
        "support_x": images(shots, np.nan),
        "support_y": labels(shots),
        "query_x": images(queries, 0.0),
        "query_y": labels(queries),
    }


def test_the_skipped_steps_in_a_row_carry_over_a_restart(tmp_path):
    # A run that keeps crashing and resuming still stops at
    # max_nonfinite_steps: 2 skipped in a row were checkpointed, so the
    # next skipped step is the 3rd.
    saved = _learner(0, max_nonfinite_steps=3)
    checkpointing.TrainCheckpoint(saved, tmp_path, keep=2).save(
        checkpointing.Progress(
            num_skipped_steps=4, num_consecutive_skipped_steps=2
        ),
        step=1,
    )
    fresh = _learner(0, max_nonfinite_steps=3)
    checkpointing.TrainCheckpoint(fresh, tmp_path, keep=2).restore_latest()
    with pytest.raises(
        learner_lib.NonFiniteLossError, match="^3 consecutive meta-steps"
    ):
        fresh.train_step(_nan_batch(fresh.config), epoch=0)
    assert fresh.num_skipped_steps == 5


def test_a_checkpoint_of_the_earlier_release_still_resumes(tmp_path):
    # Until December 2026 checkpoints held these progress counters only (no
    # skipped steps in a row or per epoch): runs in flight must resume.
    saved = _learner(seed=0)
    _perturb(saved, seed=1)
    old = {
        "epoch": tf.Variable(2, dtype=tf.int64),
        "iteration": tf.Variable(300, dtype=tf.int64),
        "next_task": tf.Variable(2400, dtype=tf.int64),
        "num_skipped_steps": tf.Variable(1, dtype=tf.int64),
        "loss_sum": tf.Variable(12.5, dtype=tf.float64),
        "accuracy_sum": tf.Variable(250.0, dtype=tf.float64),
        "seconds": tf.Variable(61.0, dtype=tf.float64),
    }
    layout = checkpointing._weights_checkpoint(
        saved, optimizer=saved.optimizer, progress=old
    )
    tf.train.CheckpointManager(
        layout, str(tmp_path / checkpointing.CHECKPOINT_DIR), max_to_keep=2
    ).save(checkpoint_number=1300)

    fresh = _learner(seed=5)
    restored = checkpointing.TrainCheckpoint(
        fresh, tmp_path, keep=2
    ).restore_latest()

    assert restored == checkpointing.Progress(
        epoch=2,
        iteration=300,
        next_task=2400,
        num_skipped_steps=1,
        loss_sum=12.5,
        accuracy_sum=250.0,
        seconds=61.0,
    )
    assert fresh.num_consecutive_skipped_steps == 0
    _assert_same_state(_state(fresh), _state(saved))


def test_restore_of_a_new_workdir_is_none(tmp_path):
    checkpoint = checkpointing.TrainCheckpoint(_learner(0), tmp_path, keep=2)
    assert checkpoint.restore_latest() is None


def test_keeps_only_the_newest_checkpoints(tmp_path):
    checkpoint = checkpointing.TrainCheckpoint(_learner(0), tmp_path, keep=2)
    for step in (1, 2, 3):
        checkpoint.save(checkpointing.Progress(iteration=step), step=step)
    assert [p.rsplit("-", 1)[1] for p in checkpoint.paths] == ["2", "3"]
    assert not list((tmp_path / "checkpoints").glob("ckpt-1.*"))


DATA = ".data-00000-of-00001"
# How a checkpoint file is damaged, and what the warning says about it.
# Each of these fails with an error type of its own, or with files missing.
CORRUPTIONS = {
    "zeroed data": (DATA, lambda b: b"\0" * 16, "IndexError: Read less"),
    "truncated data": (DATA, lambda b: b[: len(b) // 2], "IndexError"),
    "missing data shard": (DATA, None, "missing ckpt-2.data-*"),
    "missing index": (".index", None, "missing ckpt-2.index"),
}
# Damage that TF reports as a bare OpError with code UNKNOWN, as it reports
# storage errors: with every file present, no proof of damage.
UNKNOWN_CORRUPTIONS = {
    "flipped data byte": (
        DATA,
        lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]),
        "Checksum does not match",
    ),
    "garbage index": (".index", lambda b: b"garbage" * 8, "not an sstable"),
    "truncated index": (".index", lambda b: b[: len(b) // 3], "sstable"),
}


def _corrupt(prefix, how="zeroed data"):
    suffix, damage, _ = {**CORRUPTIONS, **UNKNOWN_CORRUPTIONS}[how]
    path = prefix.with_name(prefix.name + suffix)
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage(path.read_bytes()))


def _two_checkpoints(workdir):
    """(learner, checkpoint, the state saved at step 1); step 2 differs."""
    learner = _learner(0)
    checkpoint = checkpointing.TrainCheckpoint(learner, workdir, keep=3)
    checkpoint.save(checkpointing.Progress(iteration=1), step=1)
    first = _state(learner)
    _perturb(learner, seed=2)
    checkpoint.save(checkpointing.Progress(iteration=2), step=2)
    return learner, checkpoint, first


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(
    tmp_path, caplog, how
):
    _, _, expected = _two_checkpoints(tmp_path)
    _corrupt(tmp_path / "checkpoints" / "ckpt-2", how)
    before = _files(tmp_path / "checkpoints")

    fresh = _learner(seed=3)
    with caplog.at_level(logging.WARNING):
        restored = checkpointing.TrainCheckpoint(
            fresh, tmp_path, keep=3
        ).restore_latest()

    assert restored.iteration == 1
    _assert_same_state(_state(fresh), expected)
    # It says which checkpoint it skipped and why, and deletes nothing.
    [warning] = [r.getMessage() for r in caplog.records]
    assert "Skipped checkpoint " in warning
    assert "ckpt-2: it is unreadable (" in warning
    assert CORRUPTIONS[how][2] in warning
    assert _files(tmp_path / "checkpoints") == before


@pytest.mark.parametrize("how", sorted(UNKNOWN_CORRUPTIONS))
def test_an_unknown_error_with_every_file_present_is_raised_not_skipped(
    tmp_path, caplog, how
):
    # UNKNOWN is no proof of damage: falling back to ckpt-1 would lose
    # ckpt-2's training, and the next saves would rotate ckpt-2 away.
    _two_checkpoints(tmp_path)
    _corrupt(tmp_path / "checkpoints" / "ckpt-2", how)
    before = _files(tmp_path / "checkpoints")

    fresh = _learner(seed=3)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(tf.errors.OpError) as raised:
            checkpointing.TrainCheckpoint(
                fresh, tmp_path, keep=3
            ).restore_latest()

    assert raised.value.error_code == tf.errors.UNKNOWN
    assert UNKNOWN_CORRUPTIONS[how][2] in str(raised.value)
    assert "Skipped" not in caplog.text
    assert "ckpt-2 failed to restore twice" in caplog.text
    [note] = raised.value.__notes__
    assert "was not skipped" in note
    assert "ckpt-2.* to resume from the checkpoint before it" in note
    assert _files(tmp_path / "checkpoints") == before


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    checkpoint = checkpointing.TrainCheckpoint(_learner(0), tmp_path, keep=2)
    checkpoint.save(checkpointing.Progress(iteration=1), step=1)
    _corrupt(tmp_path / "checkpoints" / "ckpt-1")
    with pytest.raises(
        checkpointing.UnreadableCheckpointError,
        match=r"None of the checkpoints in .* can be read \(ckpt-1: "
        r"IndexError: Read less bytes than requested; twice, and its files "
        r"all read\)\. Put back readable copies, or delete that folder",
    ):
        checkpoint.restore_latest()


def _fail_restoring(monkeypatch, error, times=None):
    """Restoring ckpt-2 raises `error` (the first `times` times; always if
    None); other checkpoints restore as usual."""
    original = checkpointing.TrainCheckpoint._restore
    calls = []

    def restore(self, path):
        if path.endswith("ckpt-2") and (times is None or len(calls) < times):
            calls.append(path)
            raise error
        return original(self, path)

    monkeypatch.setattr(checkpointing.TrainCheckpoint, "_restore", restore)
    return calls


def _unreadable_index(monkeypatch):
    """Opening ckpt-2.index raises PermissionError (we run as root, where
    chmod does not stop reads)."""

    def fake_open(file, *args, **kwargs):
        if str(file).endswith("ckpt-2.index"):
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "open", fake_open, raising=False)


# Failures that say nothing about the checkpoint's content.
IO_ERRORS = {
    "PermissionError": (PermissionError(13, "Permission denied"), False),
    "PermissionDeniedError": (
        tf.errors.PermissionDeniedError(None, None, "ckpt-2.index"),
        False,
    ),
    "UnavailableError": (
        tf.errors.UnavailableError(None, None, "storage unreachable"),
        False,
    ),
    # What TF's reader raises for any C++ read error (status code lost):
    # the index then fails to open from Python too.
    "OpError with an unreadable file": (
        tf.errors.OpError(
            None, None, "ckpt-2.index; Permission denied", tf.errors.UNKNOWN
        ),
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(IO_ERRORS))
def test_an_io_error_is_raised_not_a_reason_to_fall_back(
    tmp_path, caplog, monkeypatch, name
):
    _two_checkpoints(tmp_path)
    before = _files(tmp_path / "checkpoints")
    error, index_unreadable = IO_ERRORS[name]
    _fail_restoring(monkeypatch, error)
    if index_unreadable:
        _unreadable_index(monkeypatch)
    expected = PermissionError if index_unreadable else type(error)

    checkpoint = checkpointing.TrainCheckpoint(_learner(3), tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(expected) as raised:
            checkpoint.restore_latest()

    assert "Skipped" not in caplog.text
    assert "so it was not skipped" in caplog.text
    assert "was not skipped: this error is not damage" in str(
        raised.value.__notes__
    )
    assert "ckpt-2 could not be read" in caplog.text
    if index_unreadable:
        assert raised.value.__cause__ is error
    assert _files(tmp_path / "checkpoints") == before


def test_a_transient_read_error_restores_on_the_second_try(
    tmp_path, caplog, monkeypatch
):
    learner, _, _ = _two_checkpoints(tmp_path)
    expected = _state(learner)
    calls = _fail_restoring(
        monkeypatch,
        tf.errors.OpError(None, None, "Input/output error", tf.errors.UNKNOWN),
        times=1,
    )

    fresh = _learner(3)
    with caplog.at_level(logging.WARNING):
        restored = checkpointing.TrainCheckpoint(
            fresh, tmp_path, keep=3
        ).restore_latest()

    assert len(calls) == 1
    assert restored.iteration == 2
    _assert_same_state(_state(fresh), expected)
    assert "restored on a second try" in caplog.text
    assert "Skipped" not in caplog.text


def _entry(epoch, accuracy):
    return checkpointing.TopKEntry(
        epoch=epoch, val_accuracy=accuracy, val_loss=1.0 - accuracy
    )


def test_top_k_keeps_the_best_epochs_and_their_weights(tmp_path):
    learner = _learner(0)
    store = checkpointing.TopKStore(learner, tmp_path, k=2)
    weights = {}
    for epoch, accuracy in enumerate([0.5, 0.7, 0.6, 0.8, 0.7]):
        _perturb(learner, seed=epoch)
        weights[epoch] = [np.array(v) for v in learner.model.variables]
        kept = store.update(_entry(epoch, accuracy))
        assert kept == (epoch != 4)

    # Ties keep the earlier epoch: epoch 4 (0.7) does not displace epoch 1.
    assert [(e.epoch, e.val_accuracy) for e in store.entries] == [
        (3, 0.8),
        (1, 0.7),
    ]
    folders = sorted(p.name for p in store.directory.iterdir())
    assert folders == ["epoch_001", "epoch_003", "index.json"]
    store.load(1)
    _assert_same_state(
        [np.array(v) for v in learner.model.variables], weights[1]
    )
    with pytest.raises(
        ValueError,
        match=r"Epoch 2 is not among the kept "
        r"top-k epochs \[3, 1\]",
    ):
        store.load(2)
    assert checkpointing.read_top_k_entries(tmp_path) == store.entries


def test_unreadable_top_k_files_name_the_file_and_how_to_recover(tmp_path):
    store = checkpointing.TopKStore(_learner(0), tmp_path, k=2)
    store.update(_entry(0, 0.5))
    weights = tmp_path / "top_k" / "epoch_000" / ("weights" + DATA)
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(
        checkpointing.UnreadableCheckpointError,
        match=r"The top-k weights of epoch 0 \(.*epoch_000/weights\) cannot "
        r"be read \(IndexError: .*\)\. Put back a readable copy, or delete "
        r".*epoch_000 and its entry in .*index\.json",
    ):
        store.load(0)

    index = tmp_path / "top_k" / "index.json"
    index.write_text('{"entries": [{"epoch": 0,')
    with pytest.raises(
        checkpointing.UnreadableCheckpointError,
        match=r"top_k/index\.json cannot be parsed \(JSONDecodeError: .*\)\. "
        r"Put back a readable copy, or delete .*top_k: training then keeps",
    ):
        store.entries  # noqa: B018 - the property reads the file.


def test_top_k_replaces_a_rerun_epoch_and_forgets_discarded_ones(tmp_path):
    store = checkpointing.TopKStore(_learner(0), tmp_path, k=3)
    for epoch, accuracy in enumerate([0.5, 0.6, 0.7]):
        store.update(_entry(epoch, accuracy))
    store.update(_entry(2, 0.4))  # Epoch 2 was rerun after a fallback.
    assert [e.epoch for e in store.entries] == [1, 0, 2]
    store.discard_from(1)
    assert [e.epoch for e in store.entries] == [0]
    assert sorted(p.name for p in store.directory.iterdir()) == [
        "epoch_000",
        "index.json",
    ]
