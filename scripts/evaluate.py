"""Evaluates a run directory with the test protocol (top-k ensemble).

  mamlpp-evaluate --workdir=runs/omniglot_5w1s [--split=test|val]
      [--num_eval_inner_steps=K]

Writes workdir/{split}_summary.json and prints it.
"""

import json

from absl import flags

try:  # First: it quiets TensorFlow's C++ logs before TensorFlow loads.
    from mamlpp_tf_scripts import _app
except ImportError:  # Run as `python scripts/evaluate.py`.
    import _app

from mamlpp_tf import checkpointing
from mamlpp_tf import distribute
from mamlpp_tf import evaluation
from mamlpp_tf import experiment

_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "A run directory written by mamlpp-train.",
    required=True,
)
_SPLIT = flags.DEFINE_enum(
    "split", "test", evaluation.EVAL_SPLITS, "The fixed tasks to score."
)
_NUM_EVAL_INNER_STEPS = flags.DEFINE_integer(
    "num_eval_inner_steps",
    None,
    "Inner steps per task (unset: the run's --num_eval_inner_steps).",
    lower_bound=1,
)
_RUNTIME_CONFIG = _app.define_runtime_flags()


def _read_config(workdir: str) -> experiment.ExperimentConfig:
    """The run's experiment (reads a file; runs no TensorFlow op).

    Raises:
      FileNotFoundError: not a run directory.
    """
    config = experiment.read_config(workdir)
    if config is None:
        raise FileNotFoundError(
            f"{workdir!r} has no {experiment.CONFIG_FILENAME}: it is not a "
            "run directory. Train first: mamlpp-train --flagfile=... "
            f"--workdir={workdir}"
        )
    return config


def _check_request(workdir: str, config, strategy) -> None:
    """What would refuse the evaluation, checked before anything is written
    (evaluate_workdir appends to the run's history before it evaluates).

    Raises:
      ValueError: no validated epoch yet, or a meta-batch that does not
        split over the replicas.
      checkpointing.UnreadableCheckpointError: a damaged top_k/index.json.
    """
    distribute.check_meta_batch_size(strategy, config.learner.meta_batch_size)
    if not checkpointing.read_top_k_entries(workdir):
        raise ValueError(
            f"{workdir!r} has no validated epoch yet (no "
            f"{checkpointing.TOP_K_DIR}/{checkpointing.TOP_K_INDEX} entry); "
            "train for at least one epoch first."
        )


def main(argv):
    """Runs the app; `argv` holds no positional arguments (checked)."""
    del argv
    with _app.checking_request():  # Writes nothing.
        config = _read_config(_WORKDIR.value)
        runtime = distribute.resolve_parallel_tasks(
            _RUNTIME_CONFIG(), config.learner.image_shape
        )
        # Before any TensorFlow op: it may split the CPU into logical
        # devices.
        strategy = distribute.make_strategy(runtime)
        _check_request(_WORKDIR.value, config, strategy)
    summary = evaluation.evaluate_workdir(
        _WORKDIR.value,
        split=_SPLIT.value,
        num_eval_inner_steps=_NUM_EVAL_INNER_STEPS.value,
        runtime=runtime,
        strategy=strategy,
    )
    print(json.dumps(summary, indent=2))


def run():
    """The `mamlpp-evaluate` console script."""
    _app.run(main)


if __name__ == "__main__":
    run()
