"""make_episodes: arrays, tf.data and folders through the apps' pipeline."""

import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import mamlpp_tf
from mamlpp_tf.data import image_folder
from mamlpp_tf.data import user_data

SHAPE = (8, 8, 1)


def _arrays(num_classes=10, per_class=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_classes * per_class, *SHAPE))
    labels = np.repeat(np.arange(num_classes) * 7, per_class)  # Not 0..n-1.
    return images.astype(np.uint8), labels


def _episodes(data, **overrides):
    values = dict(num_ways=2, num_shots=1, num_queries=2, meta_batch_size=2,
                  num_eval_tasks=4)
    values.update(overrides)
    return mamlpp_tf.make_episodes(data, **values)


def _numpy(dataset, count=None):
    if count is not None:
        dataset = dataset.take(count)
    return [{k: v.numpy() for k, v in b.items()} for b in dataset]


def test_batches_have_the_documented_layout():
    episodes = _episodes(_arrays(), split_fractions=(0.6, 0.2, 0.2))
    batch = next(iter(episodes.train))
    assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == {
        "support_x": ((2, 2, *SHAPE), tf.float32),
        "support_y": ((2, 2), tf.int32),
        "query_x": ((2, 4, *SHAPE), tf.float32),
        "query_y": ((2, 4), tf.int32),
    }
    # Class-major labels 0..N-1; pixels scaled to [0, 1].
    np.testing.assert_array_equal(batch["query_y"][0], [0, 0, 1, 1])
    assert 0.0 <= float(tf.reduce_min(batch["support_x"]))
    assert float(tf.reduce_max(batch["support_x"])) <= 1.0


def test_classes_split_by_the_image_folder_rule():
    images, labels = _arrays(num_classes=12)
    fractions = (0.5, 0.25, 0.25)
    episodes = _episodes((images, labels), split_fractions=fractions)
    classes = [types.SimpleNamespace(name=c) for c in np.unique(labels)]
    expected = image_folder.split_classes(classes, fractions, 0)
    assert [len(m) for m in expected.values()] == [6, 3, 3]
    for split, members in expected.items():
        got = episodes.splits[split].class_names
        assert got == tuple(str(c.name) for c in members)


def test_validation_and_test_tasks_are_fixed_across_calls_and_seeds():
    data = _arrays(num_classes=12)
    fractions = (0.5, 0.25, 0.25)
    first = _episodes(data, split_fractions=fractions, seed=0)
    second = _episodes(data, split_fractions=fractions, seed=3)
    for split in ("val", "test"):
        a, b = _numpy(getattr(first, split)), _numpy(getattr(second, split))
        assert len(a) == 2  # 4 tasks in batches of 2.
        for x, y in zip(a, b, strict=True):
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
    # The training stream follows the training seed.
    train_a = _numpy(first.train, 1)[0]["support_x"]
    train_b = _numpy(second.train, 1)[0]["support_x"]
    assert not np.array_equal(train_a, train_b)


def test_a_tf_data_source_gives_the_same_episodes_as_arrays():
    images, labels = _arrays(num_classes=12)
    kwargs = dict(split_fractions=(0.5, 0.25, 0.25))
    from_arrays = _episodes((images, labels), **kwargs)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(5)
    from_dataset = _episodes(dataset, **kwargs)
    for x, y in zip(_numpy(from_arrays.test), _numpy(from_dataset.test),
                    strict=True):
        np.testing.assert_array_equal(x["query_x"], y["query_x"])


def test_presplit_dict_and_folder_sources(tmp_path):
    images, labels = _arrays(num_classes=12)
    splits = {
        "train": (images[:18], labels[:18]),
        "val": (images[18:27], labels[18:27]),
        "test": (images[27:], labels[27:]),
    }
    episodes = _episodes(splits, split_fractions=None)
    assert episodes.splits["val"].class_names == ("42", "49", "56")

    for image, label in zip(images, labels, strict=True):
        folder = tmp_path / "images" / f"class{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        count = len(list(folder.iterdir()))
        Image.fromarray(image[..., 0]).save(folder / f"{count}.png")
    from_folder = _episodes(
        tmp_path / "images",
        split_fractions=(0.5, 0.25, 0.25),
        image_size=(8, 8),
        image_channels=1,
        tfds_data_dir=tmp_path / "tfds",
    )
    assert sum(s.num_classes for s in from_folder.splits.values()) == 12
    batch = next(iter(from_folder.test))
    assert tuple(batch["support_x"].shape) == (2, 2, *SHAPE)


@pytest.mark.parametrize(
    "data,kwargs,message",
    [
        (
            (np.zeros((6, *SHAPE), np.float32), np.arange(6)),
            {},
            r"images must be uint8 pixels in \[0, 255\].*got float32",
        ),
        (
            (np.zeros((6, *SHAPE), np.uint8), np.arange(5)),
            {},
            r"labels must be \[n\] for 6 images, got shape \(5,\)",
        ),
        (_arrays(), {}, r"num_ways=2 but the val split has only 1 classes"),
        (_arrays(num_classes=12), {"split_fractions": None},
         "split_fractions=None needs data already split"),
        (
            _arrays(num_classes=12, per_class=2),
            {"split_fractions": (0.5, 0.25, 0.25)},
            "fewer than num_shots \\+ num_queries = 3 images",
        ),
    ],
)
def test_bad_data_is_refused_naming_what_is_wrong(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _episodes(data, **kwargs)


def test_unknown_sources_are_a_type_error():
    with pytest.raises(TypeError, match="must be \\(images, labels\\)"):
        _episodes([1, 2, 3])
    assert user_data.DEFAULT_SPLIT_FRACTIONS == (0.7, 0.1, 0.2)
