"""Tests of the public API of mamlpp_tf.data and of its import hygiene."""

import pathlib

import mamlpp_tf.data

EXPECTED_EXPORTS = {
    "DATASETS",
    "NUM_EVAL_TASKS",
    "SPLITS",
    "ClassImages",
    "DataConfig",
    "EpisodeConfig",
    "Episodes",
    "episode_config_for",
    "episode_dataset",
    "image_shape_for",
    "load_splits",
    "make_episodes",
    "validate_episode_feasible",
    "write_mini_imagenet_folder",
}


def test_exports_are_explicit_and_importable():
    assert set(mamlpp_tf.data.__all__) == EXPECTED_EXPORTS
    assert len(mamlpp_tf.data.__all__) == len(EXPECTED_EXPORTS)
    for name in EXPECTED_EXPORTS:
        assert getattr(mamlpp_tf.data, name) is not None


def test_library_never_defines_flags():
    package = pathlib.Path(mamlpp_tf.data.__file__).parent
    for module in package.glob("*.py"):
        text = module.read_text()
        assert "absl import flags" not in text, module
        assert "absl.flags" not in text, module


def test_constants_match_the_paper():
    assert mamlpp_tf.data.NUM_EVAL_TASKS == 600
    assert mamlpp_tf.data.SPLITS == ("train", "val", "test")
