"""ExperimentConfig: validation, JSON round trip, resume compatibility."""

import dataclasses
import json

import pytest

from helpers import experiments
from mamlpp_tf import data as data_lib
from mamlpp_tf import experiment


@pytest.fixture
def config(tmp_path):
    return experiments.tiny_config(tmp_path / "tfds")


def test_json_round_trip_restores_the_same_config(config):
    values = json.loads(config.to_json())
    restored = experiment.ExperimentConfig.from_dict(values)
    assert restored == config
    # JSON turns tuples into lists; the restored config has tuples again.
    assert isinstance(restored.data.synthetic_image_shape, tuple)
    assert isinstance(restored.learner.image_shape, tuple)


def test_write_then_read_config(config, tmp_path):
    workdir = tmp_path / "run"
    path = experiment.write_config(config, workdir)
    assert path == workdir / experiment.CONFIG_FILENAME
    assert experiment.read_config(workdir) == config
    assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]


def test_read_config_of_a_new_workdir_is_none(tmp_path):
    assert experiment.read_config(tmp_path) is None


def test_read_config_names_a_corrupt_file(tmp_path):
    (tmp_path / experiment.CONFIG_FILENAME).write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not a valid"):
        experiment.read_config(tmp_path)


def test_from_dict_rejects_unknown_fields(config):
    values = config.to_dict()
    values["num_epochs"] = 3
    with pytest.raises(
        ValueError,
        match=r"Unknown ExperimentConfig fields "
        r"\['num_epochs'\]",
    ):
        experiment.ExperimentConfig.from_dict(values)
    values = config.to_dict()
    values["data"]["path"] = "/x"
    with pytest.raises(ValueError, match=r"Unknown DataConfig fields"):
        experiment.ExperimentConfig.from_dict(values)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("iterations_per_epoch", 0, "iterations_per_epoch must be an int >= 1"),
        ("top_k_ensemble", 0, "top_k_ensemble must be an int >= 1"),
        ("checkpoint_every", 1.5, "checkpoint_every must be an int >= 1"),
        ("keep_checkpoints", 1, "keep_checkpoints must be an int >= 2"),
        ("seed", -1, "seed must be an int in"),
        (
            "num_eval_tasks",
            5,
            r"num_eval_tasks=5 is not a multiple of "
            r"meta_batch_size=2.*--num_eval_tasks to 4",
        ),
    ],
)
def test_invalid_values_fail_with_the_value_and_a_fix(
    config, field, value, message
):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(config, **{field: value})


def test_learner_image_shape_must_match_the_data(config):
    learner = experiments.tiny_learner(image_shape=(28, 28, 1))
    with pytest.raises(
        ValueError,
        match=r"image_shape=\(28, 28, 1\) does "
        r"not match the synthetic images "
        r"\(16, 16, 1\)",
    ):
        dataclasses.replace(config, learner=learner)


def test_episode_config_takes_queries_and_seed_from_the_experiment(config):
    config = dataclasses.replace(
        config, seed=7, learner=experiments.tiny_learner(num_queries=3)
    )
    episode = config.episode_config()
    assert (
        episode.num_ways,
        episode.num_shots,
        episode.num_queries,
        episode.meta_batch_size,
        episode.seed,
    ) == (2, 1, 3, 2, 7)
    assert episode.augment_rotations is False  # Synthetic: no rotations.
    omniglot = dataclasses.replace(
        config,
        data=data_lib.DataConfig(dataset="omniglot", data_dir="/data"),
        learner=experiments.tiny_learner(image_shape=(28, 28, 1)),
    )
    assert omniglot.episode_config().augment_rotations is True


def test_resuming_with_the_same_or_a_longer_run_is_allowed(config):
    experiment.check_resumable(config, config, "run")
    longer = dataclasses.replace(
        config,
        learner=dataclasses.replace(config.learner, total_epochs=50),
        checkpoint_every=7,
        data=dataclasses.replace(config.data, tfds_data_dir="/elsewhere"),
    )
    experiment.check_resumable(config, longer, "run")


def test_a_different_experiment_is_refused_with_every_difference(config):
    other = dataclasses.replace(
        config,
        learner=experiments.tiny_learner(num_ways=3, meta_lr=0.01),
        iterations_per_epoch=9,
    )
    with pytest.raises(ValueError) as error:
        experiment.check_resumable(config, other, "runs/a")
    message = str(error.value)
    assert "workdir 'runs/a' holds a different experiment" in message
    assert "learner.num_ways: 2 in config.json, 3 now" in message
    assert "learner.meta_lr: 0.001 in config.json, 0.01 now" in message
    assert "iterations_per_epoch: 3 in config.json, 9 now" in message
    assert "learner.total_epochs" not in message
