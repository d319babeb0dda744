"""flags/: every paper experiment builds the authors' configuration."""

import json
import subprocess
import sys

import pytest

from helpers import apps

HELPER = apps.REPO / "tests" / "helpers" / "flagfile_configs.py"
EXPERIMENTS = [
    f"{method}_{data}_{ways}way_{shots}shot.cfg"
    for method in ("maml++", "maml")
    for data, all_ways in (("omniglot", (5, 20)), ("mini_imagenet", (5,)))
    for ways in all_ways
    for shots in (1, 5)
]


@pytest.fixture(scope="module")
def configs():
    paths = sorted(apps.FLAGS_DIR.glob("*.cfg"))
    result = subprocess.run(
        [sys.executable, str(HELPER), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env=apps.ENV,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_one_flagfile_per_paper_experiment_plus_smoke(configs):
    assert len(EXPERIMENTS) == 12
    assert sorted(configs) == sorted(
        EXPERIMENTS + ["smoke.cfg", "maml++_image_folder.cfg"]
    )
    errors = {name: c["error"] for name, c in configs.items() if "error" in c}
    assert errors == {}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_the_authors_settings(configs, name):
    config, learner = configs[name], configs[name]["learner"]
    mamlpp = name.startswith("maml++")
    omniglot = "omniglot" in name
    ways, shots = (
        int(p.split("way")[0].split("shot")[0])
        for p in name[:-4].split("_")[-2:]
    )
    # Common to every experiment.
    assert (learner["total_epochs"], config["iterations_per_epoch"]) == (
        100,
        500,
    )
    assert learner["meta_lr"] == 0.001
    assert learner["num_inner_steps"] == learner["num_eval_inner_steps"] == 5
    assert config["num_eval_tasks"] == 600
    assert config["top_k_ensemble"] == 5
    assert (learner["num_ways"], learner["num_shots"]) == (ways, shots)
    # Per dataset.
    assert config["data"]["dataset"] == (
        "omniglot" if omniglot else "mini_imagenet"
    )
    assert learner["meta_batch_size"] == (8 if omniglot else 2)
    assert learner["num_filters"] == (64 if omniglot else 48)
    assert learner["num_queries"] == (1 if omniglot else 15)
    assert learner["image_shape"] == ([28, 28, 1] if omniglot else [84, 84, 3])
    assert learner["meta_grad_clip"] == (None if omniglot else 10.0)
    # Per method.
    for part in (
        "learn_inner_lr",
        "multi_step_loss",
        "per_step_bn_statistics",
        "per_step_bn_weights",
        "cosine_annealing",
    ):
        assert learner[part] is mamlpp, part
    assert learner["second_order"] is True
    assert learner["first_order_to_second_order_epoch"] == -1
    if mamlpp:
        assert learner["msl_epochs"] == (10 if omniglot else 15)
        assert learner["min_meta_lr"] == (1e-5 if omniglot else 1e-3)
        assert learner["inner_lr_init"] == (0.1 if omniglot else 0.01)
    else:
        assert learner["inner_lr_init"] == 0.1


def test_image_folder_flagfile_is_maml_plus_plus_on_small_images(configs):
    config = configs["maml++_image_folder.cfg"]
    learner = config["learner"]
    assert config["data"]["dataset"] == "image_folder"
    assert config["data"]["image_size"] == [28, 28]
    assert config["data"]["image_channels"] == 3
    # No split_fractions: it refuses a folder that is already split.
    assert config["data"]["split_fractions"] is None
    assert learner["image_shape"] == [28, 28, 3]
    assert (learner["num_ways"], learner["num_shots"]) == (5, 1)
    assert learner["num_queries"] == 1
    # The Omniglot MAML++ settings.
    assert learner["num_inner_steps"] == learner["num_eval_inner_steps"] == 5
    assert (learner["meta_batch_size"], learner["num_filters"]) == (8, 64)
    assert learner["inner_lr_init"] == 0.1
    for part in (
        "learn_inner_lr",
        "multi_step_loss",
        "per_step_bn_statistics",
        "per_step_bn_weights",
        "cosine_annealing",
        "second_order",
    ):
        assert learner[part] is True, part
