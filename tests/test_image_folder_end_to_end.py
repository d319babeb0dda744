"""Real Omniglot as your own images: folder -> train -> export -> predict.

Omniglot's 1,623 characters are laid out as one folder of class folders
(symlinks in a temporary directory; the data is never copied or changed),
meta-trained with --dataset=image_folder and the image-folder flagfile at a
small budget, exported, and mamlpp-predict classifies held-out characters
of the test split from one example each, as a user would.
"""

import csv
import json

import pytest

from helpers import apps

FLAGFILE = apps.FLAGS_DIR / "maml++_image_folder.cfg"
# The smallest budget we measured to be clearly above chance (0.2): 150
# meta-steps of 5-way 1-shot tasks, 4 per step, a 32-filter network, 3
# inner steps. It gave 0.795 +- 0.060 on 40 test tasks and 0.81 and 0.83
# with mamlpp-predict on the two 5-class tasks below (300 steps: 0.865).
BUDGET = (
    "--image_channels=1",  # Omniglot is grey.
    "--split_fractions=0.7,0.1,0.2",
    "--num_filters=32",
    "--num_inner_steps=3",
    "--num_eval_inner_steps=3",
    "--meta_batch_size=4",
    "--total_epochs=1",
    "--iterations_per_epoch=150",
    "--msl_epochs=1",
    "--num_eval_tasks=40",
    "--top_k_ensemble=1",
    "--log_every=50",
)
NUM_WAYS = 5
# Well above the 1/5 of guessing.
MIN_ACCURACY = 0.5


def _lay_out_omniglot(omniglot_dir, root):
    """root/<alphabet>_<character> -> the real character folder."""
    root.mkdir()
    for subset in ("images_background", "images_evaluation"):
        for alphabet in sorted((omniglot_dir / subset).iterdir()):
            for character in sorted(alphabet.iterdir()):
                link = root / f"{alphabet.name}_{character.name}"
                link.symlink_to(character, target_is_directory=True)
    return root


def _task_folders(data_dir, classes, root):
    """support/<class>/: the first drawing; query/<class>/: the other 19."""
    for name in classes:
        drawings = sorted((data_dir / name).iterdir())
        (root / "support" / name).mkdir(parents=True)
        (root / "support" / name / drawings[0].name).symlink_to(drawings[0])
        (root / "query" / name).mkdir(parents=True)
        for drawing in drawings[1:]:
            (root / "query" / name / drawing.name).symlink_to(drawing)
    return root / "support", root / "query"


@pytest.mark.slow
def test_omniglot_as_an_image_folder_to_predictions(omniglot_dir, tmp_path):
    data_dir = _lay_out_omniglot(omniglot_dir, tmp_path / "omniglot_folder")
    assert len(list(data_dir.iterdir())) == 1623
    workdir = tmp_path / "run"
    result = apps.run(
        "train",
        f"--flagfile={FLAGFILE}",
        f"--data_dir={data_dir}",
        f"--tfds_data_dir={tmp_path / 'tfds'}",
        f"--workdir={workdir}",
        *BUDGET,
    )
    assert result.returncode == 0, apps.describe(result)
    summary = json.loads((workdir / "test_summary.json").read_text())
    assert summary["test_accuracy_mean"] > MIN_ACCURACY, summary

    # The split: round(0.7 * 1623) = 1136 train, round(0.8 * 1623) - 1136
    # = 162 val, 325 test characters, disjoint.
    split = json.loads((workdir / "class_split.json").read_text())
    sizes = [len(split[s]) for s in ("train", "val", "test")]
    assert sizes == [1136, 162, 325]
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))

    export_dir = tmp_path / "exported"
    result = apps.run(
        "export", f"--workdir={workdir}", f"--export_dir={export_dir}"
    )
    assert result.returncode == 0, apps.describe(result)

    # Two 5-way 1-shot tasks of held-out test characters, 19 queries per
    # class, written as JSON and as CSV.
    hits = total = 0
    for index, output in enumerate(("predictions.json", "predictions.csv")):
        classes = split["test"][NUM_WAYS * index : NUM_WAYS * (index + 1)]
        support, query = _task_folders(
            data_dir, classes, tmp_path / f"task{index}"
        )
        result = apps.run(
            "predict",
            f"--model_dir={export_dir}",
            f"--support_dir={support}",
            f"--query={query}",
            f"--output={tmp_path / output}",
        )
        assert result.returncode == 0, apps.describe(result)
        assert "Accuracy: " in result.stdout
        if output.endswith(".json"):
            rows = json.loads((tmp_path / output).read_text())["predictions"]
        else:
            with open(tmp_path / output, newline="") as f:
                rows = list(csv.DictReader(f))
        assert len(rows) == NUM_WAYS * 19
        assert {r["true_class"] for r in rows} == set(classes)
        hits += sum(r["predicted_class"] == r["true_class"] for r in rows)
        total += len(rows)
        print(f"{output}: {result.stdout.strip()}")
    assert hits / total > MIN_ACCURACY, (hits, total)
