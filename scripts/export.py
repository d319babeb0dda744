"""Exports a run directory as a SavedModel that adapts to new classes.

  mamlpp-export --workdir=runs/omniglot_5w1s --export_dir=exported/5w1s

Signatures adapt_and_predict(support_x, support_y, query_x) and
predict(query_x); see mamlpp_tf/export.py.
"""

from absl import flags

try:  # First: it quiets TensorFlow's C++ logs before TensorFlow loads.
    from mamlpp_tf_scripts import _app
except ImportError:  # Run as `python scripts/export.py`.
    import _app

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


def main(argv):
    """Runs the app; `argv` holds no positional arguments (checked)."""
    del argv
    path = export.export_workdir(
        _WORKDIR.value, _EXPORT_DIR.value, weights=_WEIGHTS.value
    )
    print(path)


def run():
    """The `mamlpp-export` console script."""
    _app.run(main)


if __name__ == "__main__":
    run()
