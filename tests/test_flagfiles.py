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
RESNET12 = [f"maml_mini_imagenet_5way_{shots}shot_resnet12.cfg"
            for shots in (1, 5)]


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
        EXPERIMENTS + RESNET12 + ["smoke.cfg", "maml++_image_folder.cfg"]
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


@pytest.mark.parametrize("name", RESNET12)
def test_resnet12_flagfiles_follow_mmfewshot_maml(configs, name):
    """open-mmlab/mmfewshot, configs/classification/maml/mini_imagenet/
    maml_resnet12_1xb105_mini-imagenet_5way-{1,5}shot.py."""
    config, learner = configs[name], configs[name]["learner"]
    shots = int(name.split("way_")[1][0])
    assert learner["backbone"] == "resnet12"
    assert learner["resnet_widths"] == [64, 160, 320, 640]
    assert config["data"]["dataset"] == "mini_imagenet"
    assert learner["image_shape"] == [84, 84, 3]
    assert (learner["num_ways"], learner["num_shots"]) == (5, shots)
    assert learner["num_queries"] == 16
    # num_inner_steps=2, inner_lr=0.01, first_order=False; 5 at test.
    assert learner["num_inner_steps"] == 2
    assert learner["num_eval_inner_steps"] == 5
    assert learner["inner_lr_init"] == 0.01
    assert learner["second_order"] is True
    assert learner["first_order_to_second_order_epoch"] == -1
    # Adam 1e-3; GradientCumulativeOptimizerHook(cumulative_iters=8).
    assert learner["meta_lr"] == 0.001
    assert learner["meta_batch_size"] == 8
    # 100000 episodes in meta-batches of 8.
    assert learner["total_epochs"] * config["iterations_per_epoch"] * 8 == (
        100000)
    assert config["num_eval_tasks"] == 1000
    for part in (
        "learn_inner_lr",
        "multi_step_loss",
        "per_step_bn_statistics",
        "per_step_bn_weights",
        "cosine_annealing",
    ):
        assert learner[part] is False, part
