"""Episodes from one's own data: arrays, a tf.data of (image, label), a folder.

`make_episodes` puts the user's images through the apps' own pipeline:
classes split into train/val/test by the seeded rule of image folders
(`image_folder.split_classes`), held as `ClassImages`, and drawn into
episode batches by `episode_dataset`: an endless, seeded training stream
and fixed, seeded validation and test tasks (the same tasks on every call
and every training seed).

Each batch is a dict (T tasks, N ways, K shots, Q queries per class):

    support_x float32 [T, N*K, H, W, C]   pixels / 255 (see normalization)
    support_y int32   [T, N*K]            labels 0..N-1, class-major
    query_x   float32 [T, N*Q, H, W, C]
    query_y   int32   [T, N*Q]

Example:
  >>> episodes = make_episodes(
  ...     (images, labels), num_ways=5, num_shots=1, meta_batch_size=8
  ... )
  >>> model.fit(episodes.train, epochs=10, steps_per_epoch=500,
  ...           validation_data=episodes.val)
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import types

import numpy as np
import tensorflow as tf

from mamlpp_tf.data import config as config_lib
from mamlpp_tf.data import episodes as episodes_lib
from mamlpp_tf.data import image_folder
from mamlpp_tf.data import loading
from mamlpp_tf.data.class_images import ClassImages

# Train/val/test shares of the classes when the data is not split yet.
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


@dataclasses.dataclass(frozen=True)
class Episodes:
    """Episode batches of one's data, split by class.

    Attributes:
      train: endless `tf.data.Dataset` of training batches (seeded by
        `config.seed`; rotations if `config.augment_rotations`).
      val, test: `num_eval_tasks` fixed tasks each (seeded by
        `config.eval_seed`), in batches of `config.meta_batch_size`.
      splits: "train"/"val"/"test" -> `ClassImages`.
      config: the `EpisodeConfig` the batches follow.
      num_eval_tasks: tasks in `val` and in `test`.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    splits: dict
    config: config_lib.EpisodeConfig
    num_eval_tasks: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return self.splits["train"].image_shape

    def batches(self, split: str, *, start_task: int = 0):
        """A fresh dataset of `split`: endless for "train" (from task
        `start_task`), the fixed `num_eval_tasks` for "val"/"test"."""
        return episodes_lib.episode_dataset(
            self.splits[split],
            self.config,
            split=split,
            start_task=start_task,
            num_tasks=None if split == "train" else self.num_eval_tasks,
        )


def _as_arrays(data, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, H, W, C], labels [n]) from arrays or a tf.data."""
    if isinstance(data, tf.data.Dataset):
        if data.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                f"{what} is an infinite tf.data.Dataset; pass a finite one "
                "of (image, label) pairs (drop .repeat())."
            )
        spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) != 2:
            raise ValueError(
                f"{what} must yield (image, label) pairs, got elements "
                f"{spec}. Map it with lambda x: (x['image'], x['label'])."
            )
        if spec[0].shape.rank == 4:  # Batched: unbatch to single images.
            data = data.unbatch()
        pairs = list(data.as_numpy_iterator())
        if not pairs:
            raise ValueError(f"{what} is an empty tf.data.Dataset.")
        images = np.stack([p[0] for p in pairs])
        labels = np.array([p[1] for p in pairs])
    elif isinstance(data, tuple) and len(data) == 2:
        images, labels = np.asarray(data[0]), np.asarray(data[1])
    else:
        raise TypeError(
            f"{what} must be (images, labels) arrays or a tf.data.Dataset "
            f"of (image, label), got {type(data).__name__}."
        )
    if images.ndim == 3:  # [n, H, W]: grey images without a channel axis.
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in config_lib.IMAGE_CHANNELS:
        raise ValueError(
            f"{what}: images must be [n, H, W, C] with C in "
            f"{config_lib.IMAGE_CHANNELS} (or [n, H, W] grey), got shape "
            f"{images.shape}."
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"{what}: images must be uint8 pixels in [0, 255] (the pipeline "
            f"scales them by 1/255), got {images.dtype}. For floats in "
            "[0, 1] pass (images * 255).round().astype(np.uint8)."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{what}: labels must be [n] for {images.shape[0]} images, got "
            f"shape {labels.shape}."
        )
    return images, labels


def _class_images(images, labels, classes) -> ClassImages:
    return ClassImages.from_classes(
        [images[labels == c] for c in classes], tuple(str(c) for c in classes)
    )


def _split_arrays(data, split_fractions, split_seed) -> dict:
    if isinstance(data, dict):
        if split_fractions is not None:
            raise ValueError(
                "data is already split (a dict of train/val/test), but "
                f"split_fractions={split_fractions}; pass split_fractions="
                "None."
            )
        if sorted(data) != sorted(config_lib.SPLITS):
            raise ValueError(
                f"A dict of splits needs the keys {list(config_lib.SPLITS)}, "
                f"got {sorted(data)}."
            )
        splits = {}
        for split in config_lib.SPLITS:
            images, labels = _as_arrays(data[split], f"data[{split!r}]")
            splits[split] = _class_images(images, labels, np.unique(labels))
        return splits
    if split_fractions is None:
        raise ValueError(
            "split_fractions=None needs data already split: a dict of "
            "'train', 'val' and 'test', or a folder holding train/, val/ "
            "and test/."
        )
    images, labels = _as_arrays(data, "data")
    # The image folders' rule, on the sorted labels (`split_classes`).
    classes = [types.SimpleNamespace(name=c) for c in np.unique(labels)]
    by_split = image_folder.split_classes(
        classes, tuple(split_fractions), split_seed
    )
    return {
        split: _class_images(images, labels, [c.name for c in members])
        for split, members in by_split.items()
    }


def _load_folder(path, split_fractions, split_seed, image_size,
                 image_channels, tfds_data_dir, episode_config) -> dict:
    if image_size is None or image_channels is None:
        raise ValueError(
            f"An image folder ({str(path)!r}) needs image_size=(H, W) and "
            "image_channels (1 grey or 3 RGB): every image is resized to "
            "them."
        )
    data_config = config_lib.DataConfig(
        dataset="image_folder",
        data_dir=str(path),
        tfds_data_dir=None if tfds_data_dir is None else str(tfds_data_dir),
        image_size=tuple(image_size),
        image_channels=image_channels,
        split_fractions=(
            None if split_fractions is None else tuple(split_fractions)
        ),
        seed=split_seed,
    )
    return loading.load_splits(data_config, episode_config=episode_config)


def make_episodes(
    data,
    *,
    num_ways: int,
    num_shots: int,
    meta_batch_size: int,
    num_queries: int = 1,
    num_eval_tasks: int = config_lib.NUM_EVAL_TASKS,
    split_fractions: tuple[float, float, float] | None = (
        DEFAULT_SPLIT_FRACTIONS
    ),
    split_seed: int = 0,
    seed: int = 0,
    eval_seed: int = 0,
    augment_rotations: bool = False,
    normalization: str = "none",
    image_size: tuple[int, int] | None = None,
    image_channels: int | None = None,
    tfds_data_dir: str | os.PathLike | None = None,
) -> Episodes:
    """Episode batches of one's own data, through the apps' pipeline.

    Args:
      data: one of
        * `(images, labels)`: images uint8 [n, H, W, C] (or [n, H, W]),
          labels [n] of any sortable type, one value per class;
        * a finite `tf.data.Dataset` of (image uint8 [H, W, C], label),
          batched or not;
        * a dict "train"/"val"/"test" -> either of those (already split
          by class; set `split_fractions=None`);
        * a folder path: one folder per class, or train/, val/ and test/
          of class folders with `split_fractions=None` (see
          `image_folder`); needs `image_size` and `image_channels`.
      num_ways, num_shots, num_queries: the task shape (N, K, Q).
      meta_batch_size: tasks per batch (T).
      num_eval_tasks: fixed tasks in `val` and in `test`; a multiple of
        `meta_batch_size` (600 in the paper).
      split_fractions: (train, val, test) shares of the classes, split by
        `split_seed` (`image_folder.split_classes`); None when `data` is
        already split.
      seed: the training task stream's seed.
      eval_seed: the fixed validation/test tasks' seed.
      augment_rotations: rotate each training class by k*90 degrees
        (Omniglot's augmentation; square images only).
      normalization: "none" (pixels / 255) or "imagenet".
      image_size, image_channels, tfds_data_dir: a folder's (H, W), 1 or
        3, and where its prepared copy is cached (see `DataConfig`).

    Returns:
      `Episodes`: train (endless), val and test (fixed) datasets of the
      module docstring's batches, and the splits.

    Raises:
      ValueError: bad shapes or dtypes, a split with fewer than num_ways
        classes or a class with fewer than num_shots + num_queries images
        (named), num_eval_tasks not a multiple of meta_batch_size.
      TypeError: `data` of an unknown kind.
    """
    config = config_lib.EpisodeConfig(
        num_ways=num_ways,
        num_shots=num_shots,
        num_queries=num_queries,
        meta_batch_size=meta_batch_size,
        augment_rotations=augment_rotations,
        seed=seed,
        eval_seed=eval_seed,
        normalization=normalization,
    )
    if isinstance(data, (str, os.PathLike)):
        splits = _load_folder(
            pathlib.Path(data), split_fractions, split_seed, image_size,
            image_channels, tfds_data_dir, config,
        )
    else:
        splits = _split_arrays(data, split_fractions, split_seed)
    shapes = {split: images.image_shape for split, images in splits.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(
            f"Every split needs one image shape, got {shapes}."
        )
    for split, class_images in splits.items():
        episodes_lib.validate_episode_feasible(class_images, config, split)
    train = episodes_lib.episode_dataset(splits["train"], config, split="train")
    val, test = (
        episodes_lib.episode_dataset(
            splits[split], config, split=split, num_tasks=num_eval_tasks
        )
        for split in ("val", "test")
    )
    return Episodes(
        train=train, val=val, test=test, splits=splits, config=config,
        num_eval_tasks=num_eval_tasks,
    )
