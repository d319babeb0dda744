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
"""

from __future__ import annotations

import dataclasses
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
# What restoring a damaged checkpoint raises: TF's DataLossError and
# friends, IndexError from the reader on short files, ValueError/
# AssertionError when the object graph does not match.
_UNREADABLE = (tf.errors.OpError, IndexError, ValueError, AssertionError)


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

        A checkpoint that fails to load (truncated or corrupt files) is
        skipped with a warning and the previous one is tried.

        Raises:
          ValueError: checkpoints exist but none can be read.
        """
        candidates = list(reversed(self._manager.checkpoints))
        for path in candidates:
            try:
                status = self._checkpoint.restore(path)
                status.assert_existing_objects_matched()
            except _UNREADABLE as error:
                log.warning(
                    "Checkpoint %s cannot be restored (%s: %s); trying the "
                    "previous one.",
                    path,
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
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
            raise ValueError(
                f"None of the checkpoints in {self.directory} can be read "
                f"({', '.join(os.path.basename(p) for p in candidates)}). "
                "Remove that folder to start over, or use a new --workdir."
            )
        return None


@dataclasses.dataclass(frozen=True)
class TopKEntry:
    """One kept epoch: its validation accuracy and loss."""

    epoch: int
    val_accuracy: float
    val_loss: float


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
        """The kept epochs, best first (empty before the first epoch)."""
        path = self.directory / TOP_K_INDEX
        if not path.exists():
            return []
        values = json.loads(path.read_text(encoding="utf-8"))
        return [TopKEntry(**entry) for entry in values["entries"]]

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
          ValueError: `epoch` is not kept, or its weights cannot be read.
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
        except _UNREADABLE as error:
            raise ValueError(
                f"The top-k weights of epoch {epoch} ({prefix}) cannot be "
                f"read: {type(error).__name__}: {error}"
            ) from error
