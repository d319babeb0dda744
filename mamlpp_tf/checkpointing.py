"""Training checkpoints and the top-k store of a run directory.

`TrainCheckpoint` holds everything a resumed run needs to continue exactly
where it stopped: the network (per-step BN statistics included), the LSLR
rates, the Adam state and the progress counters (epoch, iteration, the next
task of the training stream, the running sums of the current epoch, the
skipped meta-steps).

`TopKStore` keeps the weights (network and rates, no optimizer) of the k
epochs with the best validation accuracy, for the test ensemble.

Atomicity: TensorFlow writes a checkpoint's data and index under temporary
names and renames them when complete, and `tf.train.CheckpointManager`
rewrites its `checkpoint` index file (temp file + rename) only afterwards;
a crash mid-write therefore leaves the previous checkpoint as the latest.
The top-k weights are written to a temporary folder renamed into place,
then the JSON index is replaced the same way.

Restoring skips a checkpoint only when it is provably unreadable: one of
its files is missing, or its files can be read but TensorFlow reports
damage to their content (a checksum or format error with its own error
type) twice in a row. Any other failure is raised: a permission error, an
I/O error of the storage, and a bare `OpError` with code UNKNOWN, which
TensorFlow's checkpoint reader raises for damage and storage errors alike.
Falling back would silently lose training, and the next saves would
rotate the newer checkpoint away.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import pathlib
import shutil

import tensorflow as tf

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TOP_K_DIR = "top_k"
TOP_K_INDEX = "index.json"
WEIGHTS_PREFIX = "weights"
# What restoring a damaged checkpoint raises (TF 2.21, tests/
# test_checkpointing.py): DataLossError (a checksum mismatch), IndexError
# (a truncated or zeroed data file), NotFoundError (a missing index or
# tensor), ValueError/AssertionError (an object graph that does not
# match). A bad index, a missing data shard, and some checksum mismatches
# raise a bare OpError with code UNKNOWN: TF's checkpoint reader drops the
# status code of the C++ error, so an I/O error of the storage looks the
# same. Such a checkpoint is skipped only if one of its files is missing
# (`_missing_files`); otherwise it is tried once more, and a second
# UNKNOWN is raised with what to do (`_unknown_not_skipped`), never taken
# for damage.
_CONTENT_ERRORS = (
    tf.errors.DataLossError,
    tf.errors.NotFoundError,
    IndexError,
    ValueError,
    AssertionError,
)
# Checkpoint files are read through in pieces of this size.
_READ_CHUNK_BYTES = 1 << 20


class UnreadableCheckpointError(RuntimeError):
    """A run directory's checkpoints or top-k store cannot be read.

    Not a bad request: the message names the files and how to recover.
    """


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where training stands, as saved with the weights.

    Attributes:
      epoch: the current epoch (0-based); `total_epochs` once training is
        done.
      iteration: meta-steps already done in `epoch`.
      next_task: index of the next task of the training stream.
      num_skipped_steps: meta-steps skipped (non-finite loss or gradient)
        since the run started.
      num_consecutive_skipped_steps: the skipped meta-steps in a row that
        end here; training stops at `max_nonfinite_steps`, across restarts.
      num_skipped_steps_in_epoch: the skipped meta-steps of `epoch`.
      loss_sum, accuracy_sum: sums over the meta-steps of `epoch` that were
        applied (a skipped step's loss is left out).
      seconds: wall time spent in `epoch` so far.
    """

    epoch: int = 0
    iteration: int = 0
    next_task: int = 0
    num_skipped_steps: int = 0
    num_consecutive_skipped_steps: int = 0
    num_skipped_steps_in_epoch: int = 0
    loss_sum: float = 0.0
    accuracy_sum: float = 0.0
    seconds: float = 0.0


_INT_FIELDS = (
    "epoch",
    "iteration",
    "next_task",
    "num_skipped_steps",
    "num_consecutive_skipped_steps",
    "num_skipped_steps_in_epoch",
)
_FLOAT_FIELDS = ("loss_sum", "accuracy_sum", "seconds")
# Counters that checkpoints of earlier releases lack: such a checkpoint
# restores with them at 0 instead of being taken for a damaged one.
_COUNTERS_ADDED_LATER = (
    "num_consecutive_skipped_steps",
    "num_skipped_steps_in_epoch",
)


def _variable_key(path: str) -> str:
    """A checkpoint key from a variable path ("/" separates objects there)."""
    return path.replace("/", "-")


def _weights_checkpoint(learner, **extra) -> tf.train.Checkpoint:
    """A checkpoint of every network variable and LSLR rate, by name.

    The variables are listed explicitly, by their Keras paths: Keras 3
    layers held in Python lists are invisible to `tf.train.Checkpoint`'s
    object tracking, which would silently skip the conv stages and BN.
    """
    network = {_variable_key(v.path): v for v in learner.model.variables}
    objects = {"network": network, **extra}
    if learner.inner_rates is not None:
        objects["inner_rates"] = {
            _variable_key(name): variable
            for name, variable in learner.inner_rates.rates.items()
        }
    return tf.train.Checkpoint(**objects)


def checkpoint_paths(workdir: str | os.PathLike) -> list[str]:
    """The training checkpoints listed in `workdir/checkpoints/checkpoint`,
    oldest first; [] if there is none. Reads only that index."""
    state = tf.train.get_checkpoint_state(
        str(pathlib.Path(workdir) / CHECKPOINT_DIR)
    )
    return [] if state is None else list(state.all_model_checkpoint_paths)


class TrainCheckpoint:
    """The resumable training state in `workdir/checkpoints/`.

    Args:
      learner: the `MetaLearner` whose variables are saved and restored.
      workdir: the run directory.
      keep: checkpoints kept (oldest deleted first).
    """

    def __init__(self, learner, workdir: str | os.PathLike, *, keep: int):
        self._learner = learner
        self._counters = {
            **{n: tf.Variable(0, dtype=tf.int64, name=n) for n in _INT_FIELDS},
            **{
                n: tf.Variable(0.0, dtype=tf.float64, name=n)
                for n in _FLOAT_FIELDS
            },
        }
        self._checkpoint = _weights_checkpoint(
            learner, optimizer=learner.optimizer, progress=self._counters
        )
        self.directory = pathlib.Path(workdir) / CHECKPOINT_DIR
        self._manager = tf.train.CheckpointManager(
            self._checkpoint,
            str(self.directory),
            max_to_keep=keep,
            checkpoint_name="ckpt",
        )

    @property
    def paths(self) -> list[str]:
        """Saved checkpoint prefixes, oldest first."""
        return list(self._manager.checkpoints)

    def save(self, progress: Progress, *, step: int) -> str:
        """Saves the learner and `progress` as checkpoint number `step`."""
        for name in _INT_FIELDS + _FLOAT_FIELDS:
            self._counters[name].assign(getattr(progress, name))
        return self._manager.save(checkpoint_number=step)

    def restore_latest(self) -> Progress | None:
        """Restores the newest readable checkpoint; None if there is none.

        A checkpoint is skipped, with a warning that names it and says why,
        only if it is provably unreadable: one of its files is missing, or
        its files can be read but it fails to restore twice in a row with
        an error about its content. The skipped checkpoint stays on disk.
        Reading and restoring write nothing.

        Raises:
          UnreadableCheckpointError: checkpoints exist but none can be read.
          OSError, tf.errors.OpError: a checkpoint failed for another
            reason than its content (permissions, the storage), or twice
            with TensorFlow's code UNKNOWN while all its files read (damage
            or the storage: no proof either way); nothing was skipped, and
            the error's note says how to go on.
        """
        candidates = list(reversed(self._manager.checkpoints))
        reasons = []
        for path in candidates:
            reason = self._try_restore(path)
            if reason is not None:
                reasons.append(f"{os.path.basename(path)}: {reason}")
                log.warning(
                    "Skipped checkpoint %s: it is unreadable (%s). Trying "
                    "the previous one.",
                    path,
                    reason,
                )
                continue
            progress = Progress(
                **{n: int(self._counters[n].numpy()) for n in _INT_FIELDS},
                **{n: float(self._counters[n].numpy()) for n in _FLOAT_FIELDS},
            )
            self._learner.num_skipped_steps = progress.num_skipped_steps
            self._learner.num_consecutive_skipped_steps = (
                progress.num_consecutive_skipped_steps
            )
            log.info(
                "Restored %s: epoch %d, iteration %d.",
                path,
                progress.epoch,
                progress.iteration,
            )
            return progress
        if candidates:
            raise UnreadableCheckpointError(
                f"None of the checkpoints in {self.directory} can be read ("
                + "; ".join(reasons)
                + "). Put back readable copies, or delete that folder to "
                "train this run again from epoch 0."
            )
        return None

    def _restore(self, path: str) -> None:
        stored = {name for name, _ in tf.train.list_variables(path)}
        missing = [
            n
            for n in _COUNTERS_ADDED_LATER
            if f"progress/{n}/.ATTRIBUTES/VARIABLE_VALUE" not in stored
        ]
        if not missing:
            self._checkpoint.restore(path).assert_existing_objects_matched()
            return
        # Written before these counters existed: restore everything it has,
        # still checking that all of it matched, and start them at 0.
        for name in missing:
            self._counters[name].assign(0)
        present = {
            n: v for n, v in self._counters.items() if n not in missing
        }
        legacy = _weights_checkpoint(
            self._learner, optimizer=self._learner.optimizer, progress=present
        )
        legacy.restore(path).assert_existing_objects_matched()
        log.info(
            "Checkpoint %s predates the counters %s; they start at 0.",
            path,
            ", ".join(missing),
        )

    def _try_restore(self, path: str) -> str | None:
        """Restores `path`: None, or why it is unreadable.

        Raises what is not about the checkpoint's content.
        """
        try:
            self._restore(path)
            return None
        except Exception as error:  # noqa: BLE001 - re-raised below.
            if not _is_content_error(error):
                _not_skipped(error, path)
                raise
            first = error
        try:
            missing = _missing_files(path)
        except OSError as error:
            _not_skipped(error, path)
            raise error from first
        if missing:
            return f"missing {', '.join(missing)}; {_describe(first)}"
        # Every file reads: a transient read error passes a second time.
        try:
            self._restore(path)
        except Exception as error:  # noqa: BLE001 - re-raised below.
            if _is_unknown(error):
                _unknown_not_skipped(error, path)
                raise
            if not _is_content_error(error):
                _not_skipped(error, path)
                raise
            return f"{_describe(error)}; twice, and its files all read"
        log.warning(
            "Checkpoint %s failed to restore once (%s) and restored on a "
            "second try: a transient read error.",
            path,
            _describe(first),
        )
        return None


def _is_unknown(error: BaseException) -> bool:
    """A bare OpError with code UNKNOWN: damage or the storage, unknown."""
    return (
        isinstance(error, tf.errors.OpError)
        and error.error_code == tf.errors.UNKNOWN
    )


def _is_content_error(error: BaseException) -> bool:
    """Whether restoring may have failed on what the files hold: an error of
    `_CONTENT_ERRORS`, or UNKNOWN (then only missing files prove it)."""
    return isinstance(error, _CONTENT_ERRORS) or _is_unknown(error)


def _unknown_not_skipped(error: BaseException, path: str) -> None:
    """Logs, and notes on `error`, why an UNKNOWN `path` was not skipped."""
    log.error(
        "Checkpoint %s failed to restore twice (%s), with all its files "
        "present and readable. TensorFlow reports damage to a checkpoint and "
        "errors of the storage alike with this code, so it was not skipped.",
        path,
        _describe(error),
    )
    if hasattr(error, "add_note"):  # Python >= 3.11.
        error.add_note(
            f"Checkpoint {path} was not skipped: TensorFlow's error code "
            "UNKNOWN does not say whether the checkpoint is damaged or the "
            "storage failed. If the storage may be at fault, fix it and "
            "rerun the same command. If the checkpoint is damaged, delete "
            f"{path}.* to resume from the checkpoint before it."
        )


def _describe(error: BaseException) -> str:
    """'Type: the first line of the message'."""
    name = type(error).__name__
    lines = str(error).strip().splitlines()
    return f"{name}: {lines[0]}" if lines else name


def _not_skipped(error: BaseException, path: str) -> None:
    """Logs, and notes on `error`, why `path` was not skipped."""
    log.error(
        "Checkpoint %s could not be read (%s), and not because of its "
        "content, so it was not skipped.",
        path,
        _describe(error),
    )
    if hasattr(error, "add_note"):  # Python >= 3.11.
        error.add_note(
            f"Checkpoint {path} was not skipped: this error is not damage to "
            "its content. Fix the access to it (permissions, storage), then "
            "rerun the same command; or, to resume from the checkpoint "
            f"before it instead, delete {path}.*"
        )


def _missing_files(path: str) -> list[str]:
    """The files of checkpoint `path` that are missing, after reading the
    others through.

    A checkpoint is `path.index` and `path.data-<i>-of-<n>` for i < n.

    Raises:
      OSError: a file exists but cannot be read (permissions, the storage).
    """
    prefix = pathlib.Path(path)
    index = prefix.with_name(prefix.name + ".index")
    shards = list(prefix.parent.glob(glob.escape(prefix.name) + ".data-*"))
    expected = {index}
    for shard in shards:
        count = shard.name.rsplit("-of-", 1)[-1]
        if count.isdigit():
            expected.update(
                prefix.with_name(f"{prefix.name}.data-{i:05d}-of-{count}")
                for i in range(int(count))
            )
    missing = sorted(p.name for p in expected if not p.exists())
    if not shards:
        missing.append(f"{prefix.name}.data-*")
    for file in sorted(expected):
        if file.exists():
            with open(file, "rb") as f:
                while f.read(_READ_CHUNK_BYTES):
                    pass
    return missing


@dataclasses.dataclass(frozen=True)
class TopKEntry:
    """One kept epoch: its validation accuracy and loss."""

    epoch: int
    val_accuracy: float
    val_loss: float


def read_top_k_entries(workdir: str | os.PathLike) -> list[TopKEntry]:
    """The kept epochs of `workdir`, best first; [] without top_k/index.json.

    Reads only the index, so it needs no learner.

    Raises:
      UnreadableCheckpointError: the index exists but cannot be parsed.
    """
    path = pathlib.Path(workdir) / TOP_K_DIR / TOP_K_INDEX
    if not path.exists():
        return []
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return [TopKEntry(**entry) for entry in values["entries"]]
    except (ValueError, TypeError, KeyError) as error:
        raise UnreadableCheckpointError(
            f"{path} cannot be parsed ({_describe(error)}). Put back a "
            f"readable copy, or delete {path.parent}: training then keeps "
            "the best of the epochs still to run, and the epochs trained so "
            "far leave the test ensemble."
        ) from error


class TopKStore:
    """The weights of the best `k` epochs by validation accuracy.

    Layout: `workdir/top_k/index.json` (entries, best first) and
    `workdir/top_k/epoch_XXX/weights-*` (network and LSLR rates). Ties in
    accuracy keep the earlier epoch.

    Args:
      learner: the `MetaLearner` whose weights are saved and loaded.
      workdir: the run directory.
      k: epochs kept.
    """

    def __init__(self, learner, workdir: str | os.PathLike, *, k: int):
        self._learner = learner
        self._k = k
        self.directory = pathlib.Path(workdir) / TOP_K_DIR
        self._checkpoint = _weights_checkpoint(learner)

    @property
    def entries(self) -> list[TopKEntry]:
        """The kept epochs, best first (empty before the first epoch).

        Raises:
          UnreadableCheckpointError: index.json cannot be parsed.
        """
        return read_top_k_entries(self.directory.parent)

    def _folder(self, epoch: int) -> pathlib.Path:
        return self.directory / f"epoch_{epoch:03d}"

    def _write_index(self, entries: list[TopKEntry]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / TOP_K_INDEX
        temporary = path.with_name(path.name + ".tmp")
        values = {
            "metric": "val_accuracy",
            "k": self._k,
            "entries": [dataclasses.asdict(e) for e in entries],
        }
        temporary.write_text(
            json.dumps(values, indent=2) + "\n", encoding="utf-8"
        )
        os.replace(temporary, path)
        kept = {self._folder(e.epoch).name for e in entries}
        for folder in self.directory.glob("epoch_*"):
            if folder.name not in kept:
                shutil.rmtree(folder)

    def update(self, entry: TopKEntry) -> bool:
        """Saves the learner's weights if `entry` ranks in the top k.

        An existing entry for the same epoch (a rerun epoch) is replaced.
        Returns whether the epoch is kept.
        """
        entries = [e for e in self.entries if e.epoch != entry.epoch]
        ranked = sorted(
            entries + [entry], key=lambda e: (-e.val_accuracy, e.epoch)
        )[: self._k]
        if entry not in ranked:
            self._write_index(ranked)
            return False
        folder = self._folder(entry.epoch)
        temporary = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        self._checkpoint.write(str(temporary / WEIGHTS_PREFIX))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(temporary, folder)
        self._write_index(ranked)
        return True

    def discard_from(self, epoch: int) -> None:
        """Forgets the epochs >= `epoch` (they are about to be rerun)."""
        entries = self.entries
        kept = [e for e in entries if e.epoch < epoch]
        if len(kept) != len(entries):
            self._write_index(kept)

    def load(self, epoch: int) -> None:
        """Loads the weights kept for `epoch` into the learner.

        Raises:
          ValueError: `epoch` is not kept.
          UnreadableCheckpointError: its weights cannot be read for their
            content (other read errors are raised as they are).
        """
        kept = [e.epoch for e in self.entries]
        if epoch not in kept:
            raise ValueError(
                f"Epoch {epoch} is not among the kept top-k epochs {kept} "
                f"in {self.directory}."
            )
        prefix = str(self._folder(epoch) / WEIGHTS_PREFIX)
        try:
            self._checkpoint.read(prefix).assert_existing_objects_matched()
        except Exception as error:  # noqa: BLE001 - re-raised below.
            if not _is_content_error(error):
                raise
            raise UnreadableCheckpointError(
                f"The top-k weights of epoch {epoch} ({prefix}) cannot be "
                f"read ({_describe(error)}). Put back a readable copy, or "
                f"delete {self._folder(epoch)} and its entry in "
                f"{self.directory / TOP_K_INDEX}."
            ) from error
