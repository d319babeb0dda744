"""Tests of mamlpp_tf/data/episodes.py on small in-memory splits."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from mamlpp_tf.data import ClassImages
from mamlpp_tf.data import EpisodeConfig
from mamlpp_tf.data import episode_dataset
from mamlpp_tf.data import validate_episode_feasible
from mamlpp_tf.data import episodes

SIDE = 4


def _coded_split(sizes, channels=1, side=SIDE):
    """Images whose pixels encode (class, index): [0,0] = class, [0,1] = index.

    Pixel [1,0] is 200 and the rest 100, so that every rotation of an
    image differs from the image and from the other rotations.
    """
    per_class = []
    for c, size in enumerate(sizes):
        images = np.full((size, side, side, channels), 100, np.uint8)
        images[:, 0, 0] = c
        images[:, 0, 1] = np.arange(size)[:, None]
        images[:, 1, 0] = 200
        per_class.append(images)
    return ClassImages.from_classes(
        per_class, tuple(f"class{c}" for c in range(len(sizes)))
    )


def _config(**overrides):
    base = EpisodeConfig(
        num_ways=3, num_shots=2, num_queries=3, meta_batch_size=2, seed=1
    )
    return dataclasses.replace(base, **overrides)


def _batches(class_images, config, num_batches, **kwargs):
    kwargs.setdefault("split", "train")
    dataset = episode_dataset(class_images, config, **kwargs)
    return [
        {k: v.numpy() for k, v in batch.items()}
        for batch in dataset.take(num_batches)
    ]


def _decode(x):
    """Float [..., H, W, C] in [0,1] -> (class, index) int arrays [...]."""
    codes = np.round(x[..., 0, :2, 0] * 255).astype(int)
    return codes[..., 0], codes[..., 1]


def _tasks(batches, key):
    """Concatenates a field over batches: [num_tasks, ...]."""
    return np.concatenate([b[key] for b in batches])


def test_shapes_dtypes_and_static_spec():
    split = _coded_split([6] * 5)
    config = _config()
    dataset = episode_dataset(split, config, split="train")
    spec = dataset.element_spec
    assert spec["support_x"].shape == (2, 6, SIDE, SIDE, 1)
    assert spec["query_x"].shape == (2, 9, SIDE, SIDE, 1)
    assert spec["support_y"].shape == (2, 6)
    assert spec["query_y"].shape == (2, 9)
    assert spec["support_x"].dtype == tf.float32
    assert spec["support_y"].dtype == tf.int32
    (batch,) = _batches(split, config, 1)
    np.testing.assert_array_equal(batch["support_y"], [[0, 0, 1, 1, 2, 2]] * 2)
    np.testing.assert_array_equal(
        batch["query_y"], [[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 2
    )


def test_tasks_are_class_major_with_distinct_classes_and_images():
    split = _coded_split([7, 5, 6, 8, 5])  # Uneven class sizes.
    config = _config()
    batches = _batches(split, config, 20)
    support_class, support_index = _decode(_tasks(batches, "support_x"))
    query_class, query_index = _decode(_tasks(batches, "query_x"))
    sizes = split.class_sizes
    for task in range(support_class.shape[0]):
        classes = support_class[task].reshape(3, 2)  # [N, K]
        queries = query_class[task].reshape(3, 3)  # [N, Q]
        # Every sample of slot n comes from the one class that label n names.
        np.testing.assert_array_equal(classes, classes[:, :1].repeat(2, 1))
        np.testing.assert_array_equal(queries, classes[:, :1].repeat(3, 1))
        assert len(set(classes[:, 0])) == 3
        for n in range(3):
            indices = np.concatenate(
                [
                    support_index[task].reshape(3, 2)[n],
                    query_index[task].reshape(3, 3)[n],
                ]
            )
            assert len(set(indices)) == 5, "support and query must not share"
            assert indices.max() < sizes[classes[n, 0]]


def test_all_classes_and_images_get_drawn():
    split = _coded_split([6] * 5)
    config = _config(num_ways=2, num_shots=1, num_queries=1)
    batches = _batches(split, config, 100)
    classes, indices = _decode(_tasks(batches, "support_x"))
    assert set(classes.ravel()) == set(range(5))
    assert set(indices.ravel()) == set(range(6))


def test_same_index_gives_same_task_regardless_of_batching():
    split = _coded_split([6] * 5)
    single = _config(meta_batch_size=1)
    stream = _batches(split, single, 8)
    again = _batches(split, single, 8)
    for a, b in zip(stream, again, strict=True):
        np.testing.assert_array_equal(a["support_x"], b["support_x"])
    # Restarting at task 5 continues exactly where the stream was.
    resumed = _batches(split, single, 3, start_task=5)
    for offset in range(3):
        np.testing.assert_array_equal(
            resumed[offset]["query_x"], stream[5 + offset]["query_x"]
        )
    # Task i is the same whatever the meta-batch size.
    pairs = _batches(split, _config(meta_batch_size=2), 4)
    np.testing.assert_array_equal(
        pairs[1]["support_x"][1], stream[3]["support_x"][0]
    )


def test_seeds_and_splits_key_the_tasks():
    split = _coded_split([6] * 8)
    config = _config()

    def first(cfg, name):
        return _batches(split, cfg, 1, split=name)[0]["support_x"]

    other_seed = dataclasses.replace(config, seed=2)
    assert not np.array_equal(
        first(config, "train"), first(other_seed, "train")
    )
    # Evaluation tasks ignore the training seed and follow eval_seed.
    np.testing.assert_array_equal(
        first(config, "val"), first(other_seed, "val")
    )
    np.testing.assert_array_equal(
        first(config, "test"), first(other_seed, "test")
    )
    other_eval = dataclasses.replace(config, eval_seed=3)
    assert not np.array_equal(first(config, "val"), first(other_eval, "val"))
    # The split name is part of the key.
    assert not np.array_equal(first(config, "val"), first(config, "test"))


def test_finite_dataset_has_exactly_num_tasks():
    split = _coded_split([6] * 5)
    config = _config(meta_batch_size=4)
    dataset = episode_dataset(split, config, split="val", num_tasks=12)
    assert sum(1 for _ in dataset) == 3
    with pytest.raises(ValueError, match="num_tasks=10 is not a multiple of"):
        episode_dataset(split, config, split="val", num_tasks=10)
    with pytest.raises(ValueError, match="num_tasks must be None or an int"):
        episode_dataset(split, config, split="val", num_tasks=0)
    with pytest.raises(ValueError, match="start_task must be an int >= 0"):
        episode_dataset(split, config, split="val", start_task=-1)


def test_pixels_are_scaled_to_unit_range():
    split = _coded_split([6] * 5)
    (batch,) = _batches(split, _config(), 1)
    x = batch["query_x"]
    values = set(np.round(x[..., 1:, :, :] * 255).astype(int).ravel())
    assert values == {100, 200}
    np.testing.assert_allclose(x[..., 1, 1, 0], 100 / 255, rtol=1e-6)


def test_imagenet_normalisation():
    split = _coded_split([6] * 5, channels=3)
    config = _config(normalization="imagenet")
    (batch,) = _batches(split, config, 1)
    mean = np.array(episodes.IMAGENET_MEAN, np.float32)
    std = np.array(episodes.IMAGENET_STD, np.float32)
    np.testing.assert_allclose(
        batch["support_x"][:, :, 1, 1, :],
        np.broadcast_to((100 / 255 - mean) / std, (2, 6, 3)),
        rtol=1e-5,
        atol=1e-6,
    )


def _rotation_of(image, original):
    """The k with image == rot90(original, k), or None."""
    for k in range(4):
        if np.array_equal(image, np.rot90(original, k)):
            return k
    return None


def test_rotations_rotate_whole_classes_in_training_only():
    split = _coded_split([6] * 5)
    plain = _config(num_ways=3)
    rotated = dataclasses.replace(plain, augment_rotations=True)
    base = _tasks(_batches(split, plain, 30), "support_x")
    aug = _tasks(_batches(split, rotated, 30), "support_x")
    seen, mixed_tasks = set(), 0
    for task in range(base.shape[0]):
        task_ks = set()
        for n in range(3):
            ks = {
                _rotation_of(aug[task, 2 * n + j], base[task, 2 * n + j])
                for j in range(2)
            }
            assert len(ks) == 1 and None not in ks, "one k per class and task"
            task_ks |= ks
        seen |= task_ks
        mixed_tasks += len(task_ks) > 1
    assert seen == {0, 1, 2, 3}
    assert mixed_tasks > 0, "k is drawn per class, not per task"
    for name in ("val", "test"):
        np.testing.assert_array_equal(
            _batches(split, plain, 3, split=name)[2]["query_x"],
            _batches(split, rotated, 3, split=name)[2]["query_x"],
        )


def test_rotation_matches_numpy_rot90_on_asymmetric_images():
    # [T=2, N=4, S=2, H=3, W=3, C=2] with all-distinct values.
    x = np.arange(2 * 4 * 2 * 3 * 3 * 2, dtype=np.int32).reshape(
        2, 4, 2, 3, 3, 2
    )
    rotations = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], np.int32)
    turned = episodes.rotate_classes(tf.constant(x), tf.constant(rotations))
    for t in range(2):
        for n in range(4):
            for s in range(2):
                np.testing.assert_array_equal(
                    turned[t, n, s], np.rot90(x[t, n, s], rotations[t, n])
                )


def test_infeasible_tasks_fail_early_naming_the_problem():
    split = _coded_split([6, 6, 3, 6])
    with pytest.raises(
        ValueError, match="num_ways=5 but the train split has only 4"
    ):
        episode_dataset(split, _config(num_ways=5), split="train")
    with pytest.raises(ValueError, match=r"'class2' \(3 images\)"):
        episode_dataset(
            split, _config(num_shots=2, num_queries=2), split="train"
        )
    with pytest.raises(ValueError, match="normalization='imagenet' needs RGB"):
        validate_episode_feasible(
            _coded_split([6] * 4), _config(normalization="imagenet"), "train"
        )
    with pytest.raises(ValueError, match="split must be one of"):
        validate_episode_feasible(_coded_split([6] * 4), _config(), "training")


def test_rotations_need_square_images_in_training_only():
    wide = ClassImages.from_classes(
        [np.zeros((6, 4, 5, 1), np.uint8)] * 4, ("a", "b", "c", "d")
    )
    config = _config(augment_rotations=True)
    with pytest.raises(ValueError, match="augment_rotations needs square"):
        episode_dataset(wide, config, split="train")
    episode_dataset(wide, config, split="val", num_tasks=2)
