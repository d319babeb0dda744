"""Exports a run directory as a SavedModel that adapts to new classes.

  mamlpp-export --workdir=runs/omniglot_5w1s --export_dir=exported/5w1s

Signatures adapt_and_predict(support_x, support_y, query_x) (the
evaluation protocol's num_eval_inner_steps) and metadata() (what a request
must match; mamlpp-predict reads it); see mamlpp_tf/export.py.
"""

import pathlib

from absl import flags

try:  # First: it quiets TensorFlow's C++ logs before TensorFlow loads.
    from mamlpp_tf_scripts import _app
except ImportError:  # Run as `python scripts/export.py`.
    import _app

from mamlpp_tf import checkpointing
from mamlpp_tf import experiment
from mamlpp_tf import export

_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "A run directory written by mamlpp-train.",
    required=True,
)
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "A new folder for the SavedModel.", required=True
)
_WEIGHTS = flags.DEFINE_enum(
    "weights",
    "best",
    export.WEIGHTS,
    "'best': the epoch with the best validation accuracy; 'latest': the "
    "newest training checkpoint.",
)


def _check_request(workdir: str, export_dir: str, weights: str) -> None:
    """What would refuse the export, checked before anything is written.

    Raises:
      FileNotFoundError, FileExistsError, ValueError: not a run directory,
        a non-empty export dir, or no such weights yet.
      checkpointing.UnreadableCheckpointError: a damaged top_k/index.json.
    """
    if experiment.read_config(workdir) is None:
        raise FileNotFoundError(
            f"{workdir!r} has no {experiment.CONFIG_FILENAME}: it is not a "
            "run directory. Train first with mamlpp-train."
        )
    folder = pathlib.Path(export_dir)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(
            f"export_dir {export_dir!r} exists and is not an empty folder; "
            "pass a new --export_dir (nothing was overwritten)."
        )
    if weights == "best" and not checkpointing.read_top_k_entries(workdir):
        raise ValueError(
            f"{workdir!r} has no validated epoch yet; train for an epoch "
            "first, or export --weights=latest."
        )
    if weights == "latest" and not checkpointing.checkpoint_paths(workdir):
        raise ValueError(f"{workdir!r} has no training checkpoint.")


def main(argv):
    """Runs the app; `argv` holds no positional arguments (checked)."""
    del argv
    with _app.checking_request():  # Writes nothing.
        _check_request(_WORKDIR.value, _EXPORT_DIR.value, _WEIGHTS.value)
    path = export.export_workdir(
        _WORKDIR.value, _EXPORT_DIR.value, weights=_WEIGHTS.value
    )
    print(path)


def run():
    """The `mamlpp-export` console script."""
    _app.run(main)


if __name__ == "__main__":
    run()
