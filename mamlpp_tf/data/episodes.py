"""The tf.data pipeline of N-way K-shot tasks.

Task i of a split is a pure function of (seed, split, i): its random draws
use stateless Philox streams keyed on [seed, split id] folded with i, so a
stream can restart at any task (exact resume), and evaluation tasks are the
same in every run.

Each batch is {"support_x": float32 [T, N*K, H, W, C], "support_y": int32
[T, N*K], "query_x": float32 [T, N*Q, H, W, C], "query_y": int32 [T, N*Q]}
with static shapes. Samples are class-major: sample j of class n is at
n*K + j in the support set and n*Q + j in the query set, and its label is
n. The N classes are drawn in random order, so label n is a random class.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mamlpp_tf.data import config as config_lib
from mamlpp_tf.data import preprocessing
from mamlpp_tf.data.class_images import ClassImages

# Stable split ids for the RNG key (Python's hash() of a str is salted).
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# Philox on every device, so that tasks do not depend on where they run.
RNG_ALG = "philox"
# Omniglot rotations (the authors' code): k * 90 degrees, k in {0, 1, 2, 3}.
NUM_ROTATIONS = 4
# The normalisation of the authors' mini-ImageNet pipeline (see
# `preprocessing`, which applies it).
IMAGENET_MEAN = preprocessing.IMAGENET_MEAN
IMAGENET_STD = preprocessing.IMAGENET_STD


def validate_episode_feasible(
    class_images: ClassImages, config: config_lib.EpisodeConfig, split: str
) -> None:
    """Raises ValueError if `config`'s tasks cannot be drawn from the split.

    Checks: a known split name, enough classes for num_ways, every class
    with at least num_shots + num_queries images (naming the classes that
    have fewer), 3 channels for ImageNet normalisation, and square images
    for rotations.
    """
    if split not in SPLIT_IDS:
        raise ValueError(
            f"split must be one of {tuple(SPLIT_IDS)}, got {split!r}."
        )
    if config.num_ways > class_images.num_classes:
        raise ValueError(
            f"num_ways={config.num_ways} but the {split} split has only "
            f"{class_images.num_classes} classes. Use num_ways <= "
            f"{class_images.num_classes}."
        )
    needed = config.num_shots + config.num_queries
    sizes = class_images.class_sizes
    small = np.flatnonzero(sizes < needed)
    if small.size:
        examples = ", ".join(
            f"{class_images.class_names[c]!r} ({sizes[c]} images)"
            for c in small[:5]
        )
        raise ValueError(
            f"{small.size} classes of the {split} split have fewer than "
            f"num_shots + num_queries = {needed} images: {examples}. Lower "
            "num_shots/num_queries or remove those classes."
        )
    height, width, channels = class_images.image_shape
    if config.normalization == "imagenet" and channels != len(IMAGENET_MEAN):
        raise ValueError(
            f"normalization='imagenet' needs RGB images, got {channels} "
            "channel(s). Use normalization='none'."
        )
    if config.augment_rotations and split == "train" and height != width:
        raise ValueError(
            f"augment_rotations needs square images, got {height}x{width}. "
            "Set augment_rotations=False."
        )


class _TaskSampler:
    """Draws task i's image indices and rotations; a pure function of i."""

    def __init__(self, class_images, config, split):
        self._num_ways = config.num_ways
        self._samples = config.num_shots + config.num_queries
        self._rotate = config.augment_rotations and split == "train"
        seed = config.seed if split == "train" else config.eval_seed
        self._key = tf.constant([seed, SPLIT_IDS[split]], tf.int64)
        sizes = class_images.class_sizes
        self._num_classes = class_images.num_classes
        self._max_size = int(sizes.max())
        self._offsets = tf.constant(class_images.class_offsets[:-1], tf.int64)
        self._sizes = tf.constant(sizes, tf.int64)

    def __call__(self, task_index):
        """Returns int64 [N, K+Q] image indices and int32 [N] rotations."""
        task_seed = tf.random.experimental.stateless_fold_in(
            self._key, task_index, alg=RNG_ALG
        )
        class_seed, image_seed, rotation_seed = tf.unstack(
            tf.random.experimental.stateless_split(task_seed, 3, alg=RNG_ALG)
        )
        # N distinct classes in random order: the top N of uniform scores.
        class_scores = tf.random.stateless_uniform(
            [self._num_classes], class_seed, alg=RNG_ALG
        )
        classes = tf.math.top_k(class_scores, self._num_ways).indices  # [N]
        # K+Q distinct images per class; slots past a class's size score -1.
        sizes = tf.gather(self._sizes, classes)  # [N]
        image_scores = tf.random.stateless_uniform(
            [self._num_ways, self._max_size], image_seed, alg=RNG_ALG
        )
        valid = tf.range(self._max_size, dtype=tf.int64)[None] < sizes[:, None]
        image_scores = tf.where(valid, image_scores, -1.0)  # [N, max_size]
        local = tf.math.top_k(image_scores, self._samples).indices  # [N, K+Q]
        offsets = tf.gather(self._offsets, classes)[:, None]  # [N, 1]
        indices = offsets + tf.cast(local, tf.int64)  # [N, K+Q]
        if self._rotate:
            rotations = tf.random.stateless_uniform(
                [self._num_ways],
                rotation_seed,
                minval=0,
                maxval=NUM_ROTATIONS,
                dtype=tf.int32,
                alg=RNG_ALG,
            )
        else:
            rotations = tf.zeros([self._num_ways], tf.int32)
        return {"indices": indices, "rotations": rotations}


class _BatchAssembler:
    """Gathers a batch of tasks' images and makes the float episode."""

    def __init__(self, class_images, config, split):
        self._config = config
        self._rotate = config.augment_rotations and split == "train"
        # The split stays uint8 in memory; floats exist per batch only.
        self._images = class_images.images_tensor  # [num_images, H, W, C]
        n, t = config.num_ways, config.meta_batch_size
        labels = np.arange(n, dtype=np.int32)
        self._support_y = tf.constant(
            np.tile(np.repeat(labels, config.num_shots), (t, 1))
        )
        self._query_y = tf.constant(
            np.tile(np.repeat(labels, config.num_queries), (t, 1))
        )

    def _to_float(self, x):
        """float32 [T, N*S, H, W, C] for uint8 x [T, N, S, H, W, C]."""
        t, n, samples, height, width, channels = x.shape
        x = tf.reshape(x, [t * n * samples, height, width, channels])
        x = preprocessing.scale_pixels(x, self._config.normalization)
        return tf.reshape(x, [t, n * samples, height, width, channels])

    def __call__(self, batch):
        k = self._config.num_shots
        x = tf.gather(self._images, batch["indices"])  # [T, N, K+Q, H, W, C]
        if self._rotate:
            x = rotate_classes(x, batch["rotations"])
        return {
            "support_x": self._to_float(x[:, :, :k]),
            "support_y": self._support_y,  # [T, N*K]
            "query_x": self._to_float(x[:, :, k:]),
            "query_y": self._query_y,  # [T, N*Q]
        }


def rotate_classes(x: tf.Tensor, rotations: tf.Tensor) -> tf.Tensor:
    """Turns all images of class n in task t by rotations[t, n] * 90 degrees.

    Counter-clockwise, as numpy.rot90 over (H, W). All four turns are made
    with transposes and reversals, then each class picks its own: a per-
    pixel gather is 3x slower (measured on 20-way Omniglot batches).

    Args:
      x: [T, N, S, H, W, C] with H == W.
      rotations: int32 [T, N] in {0, 1, 2, 3}.

    Returns:
      [T, N, S, H, W, C], like x.
    """
    t, n = x.shape[0], x.shape[1]
    swap = [0, 1, 2, 4, 3, 5]  # Transposes H and W.
    turns = [
        x,
        tf.reverse(tf.transpose(x, swap), [3]),  # rot90 k=1: flipud(x.T)
        tf.reverse(x, [3, 4]),  # k=2
        tf.reverse(tf.transpose(x, swap), [4]),  # k=3: fliplr(x.T)
    ]
    stacked = tf.stack(turns, axis=2)  # [T, N, 4, S, H, W, C]
    flat = tf.reshape(stacked, [t * n * NUM_ROTATIONS, *x.shape[2:]])
    chosen = tf.range(t * n) * NUM_ROTATIONS + tf.reshape(rotations, [-1])
    return tf.reshape(tf.gather(flat, chosen), x.shape)  # [T, N, S, H, W, C]


def episode_dataset(
    class_images: ClassImages,
    config: config_lib.EpisodeConfig,
    *,
    split: str,
    start_task: int = 0,
    num_tasks: int | None = None,
) -> tf.data.Dataset:
    """Batches of `config.meta_batch_size` tasks drawn from one split.

    Batch b holds tasks start_task + b*T ... start_task + b*T + T - 1, and
    task i depends only on (seed, split, i) (`config.seed` for "train",
    `config.eval_seed` for "val"/"test"), not on T, `start_task` or the
    tf.data threading. Rotation augmentation, if configured, applies to
    "train" only.

    Args:
      class_images: the split's images, e.g. `load_splits(...)[split]`.
      config: the task shape, seeds and normalisation.
      split: "train", "val" or "test" (keys the task stream).
      start_task: index of the first task, e.g. to resume training exactly.
      num_tasks: None for an endless stream (training); otherwise exactly
        this many tasks, a multiple of meta_batch_size (e.g. NUM_EVAL_TASKS).

    Returns:
      A prefetched `tf.data.Dataset` of dicts with static shapes:
      support_x float32 [T, N*K, H, W, C], support_y int32 [T, N*K],
      query_x float32 [T, N*Q, H, W, C], query_y int32 [T, N*Q];
      class-major samples (see the module docstring).

    Raises:
      ValueError: the tasks cannot be drawn (see
        `validate_episode_feasible`), or bad start_task/num_tasks.
    """
    validate_episode_feasible(class_images, config, split)
    if not config_lib.is_int(start_task) or start_task < 0:
        raise ValueError(f"start_task must be an int >= 0, got {start_task!r}.")
    batch_size = config.meta_batch_size
    if num_tasks is None:
        tasks = tf.data.Dataset.counter(start_task)
    else:
        if not config_lib.is_int(num_tasks) or num_tasks < 1:
            raise ValueError(
                f"num_tasks must be None or an int >= 1, got {num_tasks!r}."
            )
        if num_tasks % batch_size:
            raise ValueError(
                f"num_tasks={num_tasks} is not a multiple of meta_batch_size="
                f"{batch_size}; evaluation uses whole batches only. Pick a "
                f"meta_batch_size that divides {num_tasks}, or round num_tasks "
                f"to {num_tasks // batch_size * batch_size or batch_size}."
            )
        tasks = tf.data.Dataset.range(start_task, start_task + num_tasks)
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = tasks.map(_TaskSampler(class_images, config, split), **parallel)
    dataset = dataset.batch(batch_size, drop_remainder=True, **parallel)
    dataset = dataset.map(
        _BatchAssembler(class_images, config, split), **parallel
    )
    options = tf.data.Options()
    # tf.data's static optimisations serialise the pipeline's graph, images
    # constant included: +2.4 s and +0.9 GB before the first mini-ImageNet
    # batch (measured). The pipeline is parallel by construction already.
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
