"""Tests of mamlpp_tf/data/config.py: validation and per-dataset defaults."""

import dataclasses

import pytest

from mamlpp_tf.data import DataConfig
from mamlpp_tf.data import EpisodeConfig
from mamlpp_tf.data import episode_config_for
from mamlpp_tf.data import image_shape_for


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dataset="cifar"), "dataset must be one of"),
        (dict(dataset="omniglot", data_dir=""), "data_dir must be None or"),
        (dict(dataset="omniglot", tfds_data_dir=3), "tfds_data_dir must be"),
        (dict(dataset="omniglot", split_scheme="vinyals"), "split_scheme must"),
        (
            dict(dataset="mini_imagenet", data_dir="/x", split_scheme="lake"),
            "only applies to Omniglot",
        ),
        (dict(dataset="mini_imagenet"), "mini-ImageNet cannot be downloaded"),
        (dict(dataset="synthetic", data_dir="/x"), "data_dir must be None"),
        (dict(dataset="omniglot", allow_pickle="yes"), "allow_pickle must be"),
        (dict(dataset="omniglot", seed=-1), r"seed must be an int in \[0,"),
        (dict(dataset="omniglot", seed=True), "seed must be an int"),
        (dict(dataset="omniglot", seed=2**32), "seed must be an int"),
        (
            dict(dataset="synthetic", synthetic_num_classes=(5, 0, 5)),
            "synthetic_num_classes must be a tuple of 3 ints >= 1",
        ),
        (
            dict(dataset="synthetic", synthetic_num_classes=[5, 5, 5]),
            "synthetic_num_classes must be a tuple",
        ),
        (
            dict(dataset="synthetic", synthetic_images_per_class=0),
            "synthetic_images_per_class must be an int >= 1",
        ),
        (
            dict(dataset="synthetic", synthetic_image_shape=(28, 28, 2)),
            r"C in \(1, 3\)",
        ),
        (
            dict(dataset="synthetic", synthetic_image_shape=(3, 28, 1)),
            "H, W >= 4",
        ),
    ],
)
def test_data_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)


def test_data_config_is_frozen_and_keyword_only():
    config = DataConfig(dataset="omniglot")
    assert config.split_scheme == "reference" and config.seed == 0
    assert config.data_dir is None and not config.allow_pickle
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1
    with pytest.raises(TypeError):
        DataConfig("omniglot")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_ways=0), "num_ways must be an int >= 1"),
        (dict(num_shots=1.0), "num_shots must be an int >= 1"),
        (dict(num_queries=0), "num_queries must be an int >= 1"),
        (dict(meta_batch_size=False), "meta_batch_size must be an int"),
        (dict(augment_rotations=1), "augment_rotations must be a bool"),
        (dict(seed=-2), "seed must be an int"),
        (dict(eval_seed=None), "eval_seed must be an int"),
        (dict(normalization="zscore"), "normalization must be one of"),
    ],
)
def test_episode_config_rejects_bad_values(kwargs, message):
    base = dict(num_ways=5, num_shots=1, num_queries=1, meta_batch_size=2)
    with pytest.raises(ValueError, match=message):
        EpisodeConfig(**{**base, **kwargs})


def test_image_shape_for():
    assert image_shape_for("omniglot") == (28, 28, 1)
    assert image_shape_for("mini_imagenet") == (84, 84, 3)
    assert image_shape_for(DataConfig(dataset="omniglot")) == (28, 28, 1)
    synthetic = DataConfig(dataset="synthetic", synthetic_image_shape=(8, 9, 3))
    assert image_shape_for(synthetic) == (8, 9, 3)
    with pytest.raises(ValueError, match="pass the DataConfig"):
        image_shape_for("synthetic")
    with pytest.raises(ValueError, match="dataset must be one of"):
        image_shape_for("cifar")


def test_episode_config_for_uses_the_authors_settings():
    omniglot = episode_config_for(
        "omniglot", num_ways=20, num_shots=1, meta_batch_size=8, seed=3
    )
    assert (omniglot.num_queries, omniglot.augment_rotations) == (1, True)
    assert omniglot.normalization == "none" and omniglot.seed == 3
    mini = episode_config_for(
        "mini_imagenet", num_ways=5, num_shots=5, meta_batch_size=2
    )
    assert (mini.num_queries, mini.augment_rotations) == (15, False)
    assert mini.normalization == "imagenet"
    synthetic = episode_config_for(
        "synthetic", num_ways=5, num_shots=1, meta_batch_size=2
    )
    assert (synthetic.num_queries, synthetic.augment_rotations) == (1, False)
    with pytest.raises(ValueError, match="dataset must be one of"):
        episode_config_for("cifar", num_ways=5, num_shots=1, meta_batch_size=2)
