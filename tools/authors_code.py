"""Builds the authors' PyTorch MAML++ from a checkout the user fetched.

AntreasAntoniou/HowToTrainYourMAMLPytorch is never part of this repository:
the tools that run it (benchmark_authors.py, regenerate_golden.py) take the
path of a checkout (`--authors_dir`) and import their modules from there.
Needs PyTorch and numpy, not TensorFlow.
"""

import contextlib
import io
import os
import pathlib
import sys


def config_path(authors_dir: pathlib.Path, config: str) -> pathlib.Path:
    """Their experiment_config/<config>.json, or SystemExit saying why."""
    path = authors_dir / "experiment_config" / f"{config}.json"
    if not path.is_file():
        sys.exit(
            f"error: no {path}; --authors_dir must be a checkout of "
            "HowToTrainYourMAMLPytorch and --config name one of its "
            "experiment_config/*.json without .json"
        )
    return path


def build_model(authors_dir: pathlib.Path, config_path: pathlib.Path):
    """Their MAMLFewShotClassifier and args, built as their train script.

    Their `get_args()` parses the config JSON over their argparse defaults
    (among them `--seed=104`, which seeds the initial weights through their
    `set_torch_seed`), and joins dataset_path to $DATASET_DIR; no data is
    read here, so any folder will do.
    """
    sys.path.insert(0, str(authors_dir))
    os.environ.setdefault("DATASET_DIR", str(authors_dir / "datasets"))
    argv, sys.argv = (
        sys.argv,
        ["train_maml_system.py", "--name_of_args_json_file", str(config_path)],
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Prints every arg.
            from few_shot_learning_system import MAMLFewShotClassifier
            from utils.parser_utils import get_args

            args, device = get_args()
            model = MAMLFewShotClassifier(
                args=args,
                device=device,
                im_shape=(
                    2,
                    args.image_channels,
                    args.image_height,
                    args.image_width,
                ),
            )
    finally:
        sys.argv = argv
    return model, args
