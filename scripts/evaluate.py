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

from mamlpp_tf import distribute
from mamlpp_tf import evaluation

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


def main(argv):
    """Runs the app; `argv` holds no positional arguments (checked)."""
    del argv
    runtime = _RUNTIME_CONFIG()
    # Before any TensorFlow op: it may split the CPU into logical devices.
    strategy = distribute.make_strategy(runtime)
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
