"""Frozen, validated settings of the data pipeline.

`DataConfig` says which images make up the train/val/test class splits;
`EpisodeConfig` says how N-way K-shot tasks are drawn from a split. Every
field is checked in `__post_init__`, so a bad value fails at construction,
before any data is read.
"""

from __future__ import annotations

import dataclasses

DATASETS = ("omniglot", "mini_imagenet", "synthetic", "image_folder")
SPLITS = ("train", "val", "test")
SPLIT_SCHEMES = ("reference", "lake")
NORMALIZATIONS = ("none", "imagenet")

# Antoniou et al. (2019), Sec. 5 and the authors' configs: Omniglot images
# are resized to 28x28 grey, mini-ImageNet images are 84x84 RGB.
OMNIGLOT_IMAGE_SHAPE = (28, 28, 1)
MINI_IMAGENET_IMAGE_SHAPE = (84, 84, 3)

# The authors' configs: 1 query image per class on Omniglot, 15 on
# mini-ImageNet (the Ravi & Larochelle protocol).
# Image folders default to 1 too: it asks the least of every class.
DEFAULT_NUM_QUERIES = {
    "omniglot": 1,
    "mini_imagenet": 15,
    "synthetic": 1,
    "image_folder": 1,
}

# The authors evaluate on 600 fixed tasks per split (Sec. 5).
NUM_EVAL_TASKS = 600

# Lake et al. (2015) draw 20 drawings per Omniglot character; synthetic
# classes default to the same so that they stand in for Omniglot.
DEFAULT_SYNTHETIC_IMAGES_PER_CLASS = 20
# Train/val/test class counts of the default synthetic set: those of
# mini-ImageNet (Ravi & Larochelle, 2017), small enough to generate in
# about a second at 28x28.
DEFAULT_SYNTHETIC_NUM_CLASSES = (64, 16, 20)
# Below 4 pixels a side a glyph is no longer recognisable.
MIN_SYNTHETIC_SIDE = 4
MAX_SEED = 2**32 - 1  # numpy.random.RandomState accepts seeds below 2**32.
# Image folders: what the network sees may be grey or RGB.
IMAGE_CHANNELS = (1, 3)
# How far the split fractions may sum from 1 (decimal input like 0.7,0.1,0.2
# is not exact in binary).
FRACTION_SUM_TOLERANCE = 1e-6
# The fields that only an image folder reads.
IMAGE_FOLDER_FIELDS = ("image_size", "image_channels", "split_fractions")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_seed(name: str, value) -> None:
    _require(
        is_int(value) and 0 <= value <= MAX_SEED,
        f"{name} must be an int in [0, {MAX_SEED}], got {value!r}. "
        f"Pass a non-negative integer seed.",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the images come from and how classes are split.

    Attributes:
      dataset: "omniglot", "mini_imagenet", "synthetic" or "image_folder".
      data_dir: the raw data folder. Omniglot: the folder holding
        `images_background/` and `images_evaluation/`; None downloads the
        two official archives into `tfds_data_dir/downloads`.
        mini-ImageNet: the folder holding `{train,val,test}.csv` and the
        images, or the `mini-imagenet-cache-*.pkl` pickles; required.
        Synthetic: must be None (the images are generated). Image folder:
        required; either `train/`, `val/` and `test/`, each holding one
        folder per class, or (with `split_fractions`) one folder per class
        (see `image_folder`).
      tfds_data_dir: where TFDS writes the prepared splits; None uses TFDS's
        default (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      split_scheme: Omniglot only. "reference" (the authors' exact split of
        the 1,623 pooled characters into 1,150/50/423, see
        `omniglot.split_classes`) or "lake"
        (background alphabets for train/val, evaluation alphabets for test).
      allow_pickle: allow reading the mini-ImageNet pickles. Unpickling runs
        code stored in the file, so only opt in for files you trust.
      seed: the class-split seed (Omniglot "reference"/"lake" and synthetic
        generation); 0 is the authors' `val_seed`. Independent of the
        training seed, which never changes the classes of a split.
      synthetic_num_classes: synthetic only, (train, val, test) class counts.
      synthetic_images_per_class: synthetic only, images drawn per class.
      synthetic_image_shape: synthetic only, (H, W, C) with C in {1, 3}.
      image_size: image folder only, required: (H, W) that every image is
        resized to (see `preprocessing`).
      image_channels: image folder only, required: 1 (grey) or 3 (RGB).
      split_fractions: image folder only. None: `data_dir` holds `train/`,
        `val/` and `test/`. (train, val, test), each > 0, summing to 1:
        `data_dir` is one folder of class folders, whose classes are split
        by `seed` in these proportions (`image_folder.split_classes`).
    """

    dataset: str
    data_dir: str | None = None
    tfds_data_dir: str | None = None
    split_scheme: str = "reference"
    allow_pickle: bool = False
    seed: int = 0
    synthetic_num_classes: tuple[int, int, int] = DEFAULT_SYNTHETIC_NUM_CLASSES
    synthetic_images_per_class: int = DEFAULT_SYNTHETIC_IMAGES_PER_CLASS
    synthetic_image_shape: tuple[int, int, int] = OMNIGLOT_IMAGE_SHAPE
    image_size: tuple[int, int] | None = None
    image_channels: int | None = None
    split_fractions: tuple[float, float, float] | None = None

    def __post_init__(self):
        # Lists arrive from config.json; keep the config hashable.
        for name in ("image_size", "split_fractions"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        _require(
            self.dataset in DATASETS,
            f"dataset must be one of {DATASETS}, got {self.dataset!r}.",
        )
        for name in ("data_dir", "tfds_data_dir"):
            value = getattr(self, name)
            _require(
                value is None or (isinstance(value, str) and value),
                f"{name} must be None or a non-empty path string, got "
                f"{value!r}.",
            )
        _require(
            self.split_scheme in SPLIT_SCHEMES,
            f"split_scheme must be one of {SPLIT_SCHEMES}, got "
            f"{self.split_scheme!r}.",
        )
        _require(
            self.split_scheme == "reference" or self.dataset == "omniglot",
            f"split_scheme={self.split_scheme!r} only applies to Omniglot; "
            f"{self.dataset} has fixed class splits. Leave split_scheme at "
            "'reference'.",
        )
        _require(
            isinstance(self.allow_pickle, bool),
            f"allow_pickle must be a bool, got {self.allow_pickle!r}.",
        )
        _check_seed("seed", self.seed)
        if self.dataset == "mini_imagenet":
            _require(
                self.data_dir is not None,
                "mini-ImageNet cannot be downloaded (ImageNet terms of use): "
                "set data_dir to a folder with {train,val,test}.csv plus "
                "{train,val,test}/<label>/ or images/, or with "
                "mini-imagenet-cache-{train,val,test}.pkl.",
            )
        if self.dataset == "synthetic":
            _require(
                self.data_dir is None,
                f"synthetic images are generated, so data_dir must be None, "
                f"got {self.data_dir!r}.",
            )
        self._check_synthetic()
        self._check_image_folder()

    def _check_synthetic(self) -> None:
        counts = self.synthetic_num_classes
        _require(
            isinstance(counts, tuple)
            and len(counts) == 3
            and all(is_int(c) and c >= 1 for c in counts),
            "synthetic_num_classes must be a tuple of 3 ints >= 1 "
            f"(train, val, test), got {counts!r}.",
        )
        _require(
            is_int(self.synthetic_images_per_class)
            and self.synthetic_images_per_class >= 1,
            "synthetic_images_per_class must be an int >= 1, got "
            f"{self.synthetic_images_per_class!r}.",
        )
        shape = self.synthetic_image_shape
        _require(
            isinstance(shape, tuple)
            and len(shape) == 3
            and all(is_int(s) for s in shape)
            and min(shape[:2]) >= MIN_SYNTHETIC_SIDE
            and shape[2] in (1, 3),
            "synthetic_image_shape must be a tuple (H, W, C) of ints with "
            f"H, W >= {MIN_SYNTHETIC_SIDE} and C in (1, 3), got {shape!r}.",
        )

    def _check_image_folder(self) -> None:
        if self.dataset != "image_folder":
            given = [
                n for n in IMAGE_FOLDER_FIELDS if getattr(self, n) is not None
            ]
            _require(
                not given,
                f"{', '.join(given)} only apply to dataset='image_folder', "
                f"not {self.dataset!r}, whose images have a fixed shape and "
                "split. Remove them.",
            )
            return
        _require(
            self.data_dir is not None,
            "dataset='image_folder' needs data_dir: a folder with train/, "
            "val/ and test/ class folders, or one folder of class folders "
            "with split_fractions.",
        )
        size = self.image_size
        _require(
            isinstance(size, tuple)
            and len(size) == 2
            and all(is_int(s) and s >= 1 for s in size),
            "image_folder needs image_size, the (H, W) of what the network "
            f"sees, e.g. --image_size=28 or --image_size=84,84; got {size!r}.",
        )
        _require(
            is_int(self.image_channels)
            and self.image_channels in IMAGE_CHANNELS,
            f"image_folder needs image_channels in {IMAGE_CHANNELS} (grey or "
            f"RGB), e.g. --image_channels=3; got {self.image_channels!r}.",
        )
        fractions = self.split_fractions
        if fractions is None:
            return
        _require(
            isinstance(fractions, tuple)
            and len(fractions) == 3
            and all(
                isinstance(f, (int, float)) and not isinstance(f, bool)
                for f in fractions
            )
            and all(f > 0 for f in fractions)
            and abs(sum(fractions) - 1.0) <= FRACTION_SUM_TOLERANCE,
            "split_fractions must be None or 3 fractions of the classes "
            "(train, val, test), each > 0, summing to 1, e.g. "
            f"--split_fractions=0.7,0.1,0.2; got {fractions!r}.",
        )


def image_shape_for(dataset: str | DataConfig) -> tuple[int, int, int]:
    """The (H, W, C) of the images `load_splits` returns.

    Args:
      dataset: "omniglot", "mini_imagenet", or a `DataConfig` (needed for
        "synthetic" and "image_folder", whose shape is configurable).

    Returns:
      (28, 28, 1) for Omniglot, (84, 84, 3) for mini-ImageNet,
      `config.synthetic_image_shape` for synthetic data and
      (*config.image_size, config.image_channels) for an image folder.
    """
    if isinstance(dataset, DataConfig):
        if dataset.dataset == "synthetic":
            return dataset.synthetic_image_shape
        if dataset.dataset == "image_folder":
            return (*dataset.image_size, dataset.image_channels)
        dataset = dataset.dataset
    if dataset == "omniglot":
        return OMNIGLOT_IMAGE_SHAPE
    if dataset == "mini_imagenet":
        return MINI_IMAGENET_IMAGE_SHAPE
    if dataset in ("synthetic", "image_folder"):
        raise ValueError(
            f"The {dataset} image shape is configurable: pass the DataConfig "
            f"instead of the string {dataset!r}."
        )
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpisodeConfig:
    """How N-way K-shot tasks are drawn from a class split.

    Attributes:
      num_ways: classes per task (N).
      num_shots: support images per class (K).
      num_queries: query images per class (Q).
      meta_batch_size: tasks per batch (T).
      augment_rotations: the authors' Omniglot augmentation: in each training
        task every class is rotated by k*90 degrees, k drawn from {0,1,2,3}
        per class. Applies to the "train" split only; val/test tasks are
        never rotated (the authors' code).
      seed: keys the "train" task stream; use the training seed.
      eval_seed: keys the fixed "val" and "test" task sets. Kept apart from
        `seed` so that every training seed is evaluated on the same tasks.
      normalization: "none" (pixels in [0, 1]; Omniglot, synthetic) or
        "imagenet" (per-channel ImageNet mean/std; mini-ImageNet).
    """

    num_ways: int
    num_shots: int
    num_queries: int
    meta_batch_size: int
    augment_rotations: bool = False
    seed: int = 0
    eval_seed: int = 0
    normalization: str = "none"

    def __post_init__(self):
        for name in ("num_ways", "num_shots", "num_queries", "meta_batch_size"):
            value = getattr(self, name)
            _require(
                is_int(value) and value >= 1,
                f"{name} must be an int >= 1, got {value!r}.",
            )
        _require(
            isinstance(self.augment_rotations, bool),
            f"augment_rotations must be a bool, got "
            f"{self.augment_rotations!r}.",
        )
        _check_seed("seed", self.seed)
        _check_seed("eval_seed", self.eval_seed)
        _require(
            self.normalization in NORMALIZATIONS,
            f"normalization must be one of {NORMALIZATIONS}, got "
            f"{self.normalization!r}.",
        )


def episode_config_for(
    dataset: str,
    *,
    num_ways: int,
    num_shots: int,
    meta_batch_size: int,
    seed: int = 0,
    eval_seed: int = 0,
) -> EpisodeConfig:
    """The authors' episode settings for `dataset`.

    Omniglot: 1 query per class, rotation augmentation in training, no
    normalisation. mini-ImageNet: 15 queries, no augmentation, ImageNet
    normalisation. Synthetic and image folders: 1 query, no augmentation,
    no normalisation (pixels in [0, 1]).
    Override any field with `dataclasses.replace`.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}.")
    return EpisodeConfig(
        num_ways=num_ways,
        num_shots=num_shots,
        num_queries=DEFAULT_NUM_QUERIES[dataset],
        meta_batch_size=meta_batch_size,
        augment_rotations=dataset == "omniglot",
        seed=seed,
        eval_seed=eval_seed,
        normalization="imagenet" if dataset == "mini_imagenet" else "none",
    )
