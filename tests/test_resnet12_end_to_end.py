"""ResNet-12 through every app, on an image folder: train -> evaluate ->
export -> mamlpp-predict. Tiny widths and budget: this checks the plumbing
(config.json, checkpoints, SavedModel, serving), not accuracy."""

import json

from PIL import Image

from helpers import apps
from mamlpp_tf.data import synthetic

NUM_CLASSES = 10
IMAGES_PER_CLASS = 4


def _write_class(folder, class_index, count, first=0):
    folder.mkdir(parents=True, exist_ok=True)
    images = synthetic.draw_class(3, class_index, first + count, (20, 20, 1))
    for i in range(first, first + count):
        Image.fromarray(images[i, :, :, 0]).save(folder / f"{i:02d}.png")


def test_resnet12_trains_evaluates_exports_and_predicts(tmp_path):
    data_dir = tmp_path / "images"
    for c in range(NUM_CLASSES):
        _write_class(data_dir / f"class{c}", c, IMAGES_PER_CLASS)
    workdir = tmp_path / "run"
    result = apps.run(
        "train",
        "--dataset=image_folder",
        f"--data_dir={data_dir}",
        f"--tfds_data_dir={tmp_path / 'tfds'}",
        f"--workdir={workdir}",
        "--split_fractions=0.6,0.2,0.2",
        "--image_size=16",
        "--image_channels=1",
        "--backbone=resnet12",
        "--resnet_widths=4,4,4,4",
        "--num_ways=2",
        "--num_shots=1",
        "--meta_batch_size=2",
        "--num_inner_steps=2",
        "--msl_epochs=1",
        "--total_epochs=1",
        "--iterations_per_epoch=2",
        "--num_eval_tasks=2",
        "--top_k_ensemble=1",
    )
    assert result.returncode == 0, apps.describe(result)
    config = json.loads((workdir / "config.json").read_text())
    assert config["learner"]["backbone"] == "resnet12"
    assert config["learner"]["resnet_widths"] == [4, 4, 4, 4]

    result = apps.run("evaluate", f"--workdir={workdir}", "--split=val")
    assert result.returncode == 0, apps.describe(result)
    assert json.loads(result.stdout)["num_val_tasks"] == 2

    export_dir = tmp_path / "exported"
    result = apps.run(
        "export", f"--workdir={workdir}", f"--export_dir={export_dir}"
    )
    assert result.returncode == 0, apps.describe(result)

    # New classes: one support image and two queries each.
    for index, name in enumerate(("new_a", "new_b")):
        _write_class(tmp_path / "support" / name, 20 + index, 1)
        _write_class(tmp_path / "query" / name, 20 + index, 2, first=1)
    output = tmp_path / "predictions.json"
    result = apps.run(
        "predict",
        f"--model_dir={export_dir}",
        f"--support_dir={tmp_path / 'support'}",
        f"--query={tmp_path / 'query'}",
        f"--output={output}",
    )
    assert result.returncode == 0, apps.describe(result)
    rows = json.loads(output.read_text())["predictions"]
    assert len(rows) == 4
    assert {r["true_class"] for r in rows} == {"new_a", "new_b"}
    assert {r["predicted_class"] for r in rows} <= {"new_a", "new_b"}
