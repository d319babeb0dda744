"""Runs an exported SavedModel in a process with TensorFlow alone.

As a script (what `run_in_subprocess` starts):

    python run_saved_model.py EXPORT_DIR TASK.npz OUT.npz

TASK.npz holds support_x, support_y, query_x. Writes OUT.npz with the
logits of adapt_and_predict, and prints one JSON line: the mamlpp
modules this process imported (there must be none), the signature names
and the model's metadata (its `metadata` signature, decoded).
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import tensorflow as tf

# The packages this process must not import. (An editable install adds a
# `__editable___mamlpp_tf_*_finder` import hook at startup: not the library.)
MAMLPP_PACKAGES = ("mamlpp_tf", "mamlpp_tf_scripts")
TASK_KEYS = ("support_x", "support_y", "query_x")


def main(export_dir, task_path, out_path):
    task = np.load(task_path)
    model = tf.saved_model.load(export_dir)
    adapt = model.signatures["adapt_and_predict"](
        support_x=tf.constant(task["support_x"]),
        support_y=tf.constant(task["support_y"]),
        query_x=tf.constant(task["query_x"]),
    )["logits"]
    np.savez(out_path, adapt_and_predict=adapt.numpy())
    metadata = model.signatures["metadata"]()
    print(
        json.dumps(
            {
                "mamlpp_modules": sorted(
                    m for m in sys.modules if m.split(".")[0] in MAMLPP_PACKAGES
                ),
                "signatures": sorted(model.signatures),
                "metadata": json.loads(metadata["json"].numpy().decode()),
                "metadata_tensors": {
                    k: metadata[k].numpy().tolist()
                    for k in ("image_shape", "num_ways", "num_inner_steps")
                },
            }
        )
    )


def run_in_subprocess(export_dir, task: dict, tmp_path) -> dict:
    """adapt_and_predict's logits on `task`, and the metadata, in a
    TensorFlow-only process.

    Asserts that the process imported no mamlpp module and that the model
    has exactly the two signatures.

    Returns:
      "adapt_and_predict": logits; "metadata": the decoded
      JSON; "metadata_tensors": its typed fields as lists/ints.
    """
    task_path, out_path = tmp_path / "task.npz", tmp_path / "out.npz"
    np.savez(task_path, **{k: task[k] for k in TASK_KEYS})
    result = subprocess.run(
        [
            sys.executable,
            str(pathlib.Path(__file__)),
            str(export_dir),
            str(task_path),
            str(out_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["mamlpp_modules"] == []
    assert report["signatures"] == ["adapt_and_predict", "metadata"]
    return {
        **dict(np.load(out_path)),
        "signatures": report["signatures"],
        "metadata": report["metadata"],
        "metadata_tensors": report["metadata_tensors"],
    }


if __name__ == "__main__":
    main(*sys.argv[1:])
