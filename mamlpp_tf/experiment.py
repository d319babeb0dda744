"""The frozen configuration of one experiment and its `config.json`.

An experiment is a `MetaLearnerConfig` (model and meta-step), a
`DataConfig` (where the images come from) and the protocol around them:
epochs of `iterations_per_epoch` meta-steps, validation on fixed tasks,
the top-k ensemble, checkpointing. The training app writes the resolved
config to `workdir/config.json` before the first step; rerunning it on the
same workdir resumes only if `check_resumable` accepts the new config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from mamlpp_tf import config as learner_config_lib
from mamlpp_tf import data as data_lib

CONFIG_FILENAME = "config.json"

# Fields that may differ between a workdir's config.json and the config of
# a resumed run: they change how long training runs or how it is logged and
# stored, not what a given meta-step computes. total_epochs may change to
# extend or shorten a run without cosine annealing; with CA on, `training`
# refuses a change once a checkpoint exists (it would rewrite the meta lr
# schedule, or re-warm it on a finished run). data_dir/tfds_data_dir may
# move.
RESUMABLE_FIELDS = (
    "learner.total_epochs",
    "learner.max_nonfinite_steps",
    "data.data_dir",
    "data.tfds_data_dir",
    "data.allow_pickle",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One meta-training run, from data to the test protocol.

    Attributes:
      learner: the model and meta-step.
      data: the image source and its class split.
      iterations_per_epoch: meta-steps per epoch (500 in the paper). Task
        stream position, schedules and checkpoints count in these epochs.
      num_eval_tasks: fixed validation tasks per epoch and fixed test tasks
        at the end (600 in the paper); a multiple of meta_batch_size.
      top_k_ensemble: the test averages the logits of the k epochs with the
        best validation accuracy (5 in the authors' code). With fewer
        epochs than k, all epochs are averaged.
      seed: the training seed: weight initialisation and the training task
        stream. (The class split has its own seed, `data.seed`, and the
        validation/test tasks are fixed across training seeds.)
      checkpoint_every: also checkpoint every this many meta-steps, on top
        of the end of every epoch; bounds what a SIGKILL loses.
      keep_checkpoints: training checkpoints kept (>= 2, so that a corrupt
        latest one can fall back to the previous).
      log_every: meta-steps between progress lines and TensorBoard points.
    """

    learner: learner_config_lib.MetaLearnerConfig
    data: data_lib.DataConfig
    iterations_per_epoch: int = 500
    num_eval_tasks: int = data_lib.NUM_EVAL_TASKS
    top_k_ensemble: int = 5
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10

    def __post_init__(self):
        _require(
            isinstance(self.learner, learner_config_lib.MetaLearnerConfig),
            f"learner must be a MetaLearnerConfig, got "
            f"{type(self.learner).__name__}.",
        )
        _require(
            isinstance(self.data, data_lib.DataConfig),
            f"data must be a DataConfig, got {type(self.data).__name__}.",
        )
        for name in (
            "iterations_per_epoch",
            "num_eval_tasks",
            "top_k_ensemble",
            "checkpoint_every",
            "log_every",
        ):
            value = getattr(self, name)
            _require(
                _is_int(value) and value >= 1,
                f"{name} must be an int >= 1, got {value!r}. Set --{name} "
                "to a positive count.",
            )
        _require(
            _is_int(self.keep_checkpoints) and self.keep_checkpoints >= 2,
            f"keep_checkpoints must be an int >= 2, got "
            f"{self.keep_checkpoints!r}: a corrupt latest checkpoint falls "
            "back to the previous one.",
        )
        _require(
            _is_int(self.seed) and 0 <= self.seed < 2**32,
            f"seed must be an int in [0, 2**32), got {self.seed!r}.",
        )
        batch = self.learner.meta_batch_size
        multiple = max(batch, self.num_eval_tasks // batch * batch)
        _require(
            self.num_eval_tasks % batch == 0,
            f"num_eval_tasks={self.num_eval_tasks} is not a multiple of "
            f"meta_batch_size={batch}; evaluation runs whole batches. Set "
            f"--num_eval_tasks to {multiple} or another multiple.",
        )
        expected = data_lib.image_shape_for(self.data)
        _require(
            tuple(self.learner.image_shape) == tuple(expected),
            f"learner.image_shape={self.learner.image_shape} does not match "
            f"the {self.data.dataset} images {expected}. Build the learner "
            "config with image_shape=mamlpp_tf.data.image_shape_for(data).",
        )

    def episode_config(self) -> data_lib.EpisodeConfig:
        """Tasks of this experiment: the dataset's protocol, our sizes."""
        protocol = data_lib.episode_config_for(
            self.data.dataset,
            num_ways=self.learner.num_ways,
            num_shots=self.learner.num_shots,
            meta_batch_size=self.learner.meta_batch_size,
            seed=self.seed,
        )
        return dataclasses.replace(
            protocol, num_queries=self.learner.num_queries
        )

    def to_dict(self) -> dict:
        """Nested plain values (the learner and data configs as dicts)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The config.json text: `to_dict`, sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> ExperimentConfig:
        """Inverse of `to_dict` (JSON lists become tuples again).

        Raises:
          ValueError: unknown or missing fields, or invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        _require(
            not unknown,
            f"Unknown ExperimentConfig fields {unknown}; known fields are "
            f"{sorted(known)}.",
        )
        missing = sorted({"learner", "data"} - set(values))
        _require(not missing, f"ExperimentConfig needs the fields {missing}.")
        data_values = dict(values["data"])
        data_fields = {f.name for f in dataclasses.fields(data_lib.DataConfig)}
        unknown = sorted(set(data_values) - data_fields)
        _require(
            not unknown,
            f"Unknown DataConfig fields {unknown}; known fields are "
            f"{sorted(data_fields)}.",
        )
        for name in ("synthetic_num_classes", "synthetic_image_shape"):
            if isinstance(data_values.get(name), list):
                data_values[name] = tuple(data_values[name])
        return cls(
            **{
                **values,
                "learner": learner_config_lib.MetaLearnerConfig.from_dict(
                    values["learner"]
                ),
                "data": data_lib.DataConfig(**data_values),
            }
        )


def _flatten(values: dict, prefix: str = "") -> dict:
    """{"learner": {"num_ways": 5}} -> {"learner.num_ways": 5}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(
    saved: ExperimentConfig,
    requested: ExperimentConfig,
    workdir: str | os.PathLike,
) -> None:
    """Raises ValueError unless `requested` may continue `saved`'s run.

    Every field outside `RESUMABLE_FIELDS` must be equal; the message lists
    each difference with both values.
    """
    old, new = _flatten(saved.to_dict()), _flatten(requested.to_dict())
    differences = [
        f"{name}: {old.get(name)!r} in config.json, {new.get(name)!r} now"
        for name in sorted(set(old) | set(new))
        if name not in RESUMABLE_FIELDS and old.get(name) != new.get(name)
    ]
    _require(
        not differences,
        f"workdir {str(workdir)!r} holds a different experiment: "
        + "; ".join(differences)
        + ". Use a new --workdir, or rerun with the settings in "
        f"{os.path.join(workdir, CONFIG_FILENAME)} to resume it.",
    )


def read_config(workdir: str | os.PathLike) -> ExperimentConfig | None:
    """The config saved in `workdir`, or None if it has no config.json.

    Raises:
      ValueError: the file exists but is not a valid ExperimentConfig.
    """
    path = pathlib.Path(workdir) / CONFIG_FILENAME
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return ExperimentConfig.from_dict(values)
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path} is not a valid experiment config ({error}). Restore it "
            "or use a new --workdir."
        ) from error


def write_config(
    config: ExperimentConfig, workdir: str | os.PathLike
) -> pathlib.Path:
    """Writes `workdir/config.json` atomically (temp file, then rename)."""
    path = pathlib.Path(workdir) / CONFIG_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(config.to_json() + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
