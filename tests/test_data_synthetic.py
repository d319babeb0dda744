"""Tests of mamlpp_tf/data/synthetic.py and of preparing it with TFDS."""

import numpy as np
import pytest

from mamlpp_tf.data import DataConfig
from mamlpp_tf.data import EpisodeConfig
from mamlpp_tf.data import episode_dataset
from mamlpp_tf.data import load_splits
from mamlpp_tf.data import loading
from mamlpp_tf.data import synthetic

NUM_CLASSES = (6, 3, 4)


def _config(tfds_dir, **overrides):
    settings = dict(
        dataset="synthetic",
        tfds_data_dir=str(tfds_dir),
        synthetic_num_classes=NUM_CLASSES,
        synthetic_images_per_class=5,
        synthetic_image_shape=(12, 12, 1),
    )
    return DataConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds_synthetic")


def test_draw_class_is_deterministic_and_shaped():
    a = synthetic.draw_class(0, 3, 4, (10, 14, 3))
    assert a.shape == (4, 10, 14, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, synthetic.draw_class(0, 3, 4, (10, 14, 3)))
    assert not np.array_equal(a, synthetic.draw_class(1, 3, 4, (10, 14, 3)))
    assert not np.array_equal(a, synthetic.draw_class(0, 4, 4, (10, 14, 3)))
    assert len({a[i].tobytes() for i in range(4)}) == 4, "each drawing differs"


def test_classes_are_learnable_by_nearest_centroid():
    # 20-way 5-shot on raw pixels; chance is 5%.
    images = np.stack(
        [synthetic.draw_class(0, c, 15, (28, 28, 1)) for c in range(20)]
    )
    x = images.reshape(20, 15, -1).astype(np.float32) / 255.0
    centroids = x[:, :5].mean(axis=1)  # [classes, D]
    queries = x[:, 5:]  # [classes, 10, D]
    distances = ((queries[:, :, None] - centroids[None, None]) ** 2).sum(-1)
    accuracy = (distances.argmin(-1) == np.arange(20)[:, None]).mean()
    assert accuracy > 0.5


def test_load_splits_prepares_once_then_reloads(tfds_dir, monkeypatch):
    splits = load_splits(_config(tfds_dir))
    assert [splits[s].num_classes for s in ("train", "val", "test")] == list(
        NUM_CLASSES
    )
    names = [n for s in splits.values() for n in s.class_names]
    assert len(set(names)) == sum(NUM_CLASSES)
    for split in splits.values():
        assert split.images.shape[1:] == (12, 12, 1)
        np.testing.assert_array_equal(split.class_sizes, 5)
    # The test classes are the last ones: glyph 9 is test class 0.
    np.testing.assert_array_equal(
        splits["test"].class_images(0),
        synthetic.draw_class(0, 9, 5, (12, 12, 1)),
    )

    def fail(*args):
        raise AssertionError("prepared data must be reused, not redrawn")

    monkeypatch.setattr(synthetic, "draw_class", fail)
    again = load_splits(_config(tfds_dir))
    for split in splits:
        np.testing.assert_array_equal(again[split].images, splits[split].images)
        assert again[split].class_names == splits[split].class_names


def test_changed_settings_never_load_stale_data(tfds_dir):
    first = loading.make_builder(_config(tfds_dir))
    other_seed = loading.make_builder(_config(tfds_dir, seed=1))
    assert first.data_dir != other_seed.data_dir
    shape = loading.make_builder(
        _config(tfds_dir, synthetic_image_shape=(12, 12, 3))
    )
    assert shape.data_dir not in (first.data_dir, other_seed.data_dir)


def test_interrupted_preparation_leaves_nothing_and_reruns(
    tmp_path, monkeypatch
):
    config = _config(tmp_path)
    calls = []
    draw = synthetic.draw_class

    def interrupt_on_third_class(seed, index, num_images, shape):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return draw(seed, index, num_images, shape)

    # One process, so that the patched function is the one that runs.
    monkeypatch.setattr(
        "mamlpp_tf.data.parallel_decode.num_decode_workers", lambda: 1
    )
    monkeypatch.setattr(synthetic, "draw_class", interrupt_on_third_class)
    with pytest.raises(KeyboardInterrupt):
        load_splits(config)
    builder = loading.make_builder(config)
    assert not builder.data_path.exists()
    # Not even the empty folders that TFDS made around its temporary one.
    assert not builder.data_path.parent.exists(), list(
        builder.data_path.parent.iterdir()
    )
    monkeypatch.setattr(synthetic, "draw_class", draw)
    splits = load_splits(config)
    assert splits["train"].num_classes == NUM_CLASSES[0]


def test_synthetic_episodes_run(tfds_dir):
    splits = load_splits(_config(tfds_dir))
    config = EpisodeConfig(
        num_ways=3, num_shots=1, num_queries=2, meta_batch_size=2
    )
    batch = next(
        iter(episode_dataset(splits["val"], config, split="val", num_tasks=4))
    )
    assert batch["query_x"].shape == (2, 6, 12, 12, 1)
