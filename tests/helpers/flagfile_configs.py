"""Subprocess: the ExperimentConfig that mamlpp-train builds per flagfile.

    python flagfile_configs.py FLAGFILE...

Prints one JSON object: flagfile name -> config dict, or -> {"error": ...}
for a flagfile the app would refuse. Runs in its own process because absl
flags are process-global.
"""

import json
import pathlib
import sys

from absl import flags

from mamlpp_tf_scripts import train

# Building a config reads no data: any paths do. mini-ImageNet and image
# folders require a data_dir (neither can be downloaded).
WORKDIR = "--workdir=/nonexistent/run"
MINI_IMAGENET_DATA_DIR = "/nonexistent/mini_imagenet"
IMAGE_FOLDER_DATA_DIR = "/nonexistent/my_images"  # Required, like the above.


def main(paths):
    configs = {}
    for path in paths:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["mamlpp-train", f"--flagfile={path}", WORKDIR])
        if flags.FLAGS.dataset == "mini_imagenet":
            flags.FLAGS.data_dir = MINI_IMAGENET_DATA_DIR
        if flags.FLAGS.dataset == "image_folder":
            flags.FLAGS.data_dir = IMAGE_FOLDER_DATA_DIR
        try:
            configs[pathlib.Path(path).name] = (
                train.experiment_config().to_dict()
            )
        except ValueError as error:
            configs[pathlib.Path(path).name] = {"error": str(error)}
    print(json.dumps(configs))


if __name__ == "__main__":
    main(sys.argv[1:])
