"""mini-ImageNet (Ravi & Larochelle split) from its two common layouts.

CSV layout: `<root>/{train,val,test}.csv` with the header `filename,label`,
and the images either under `<root>/{train,val,test}/<label>/<filename>` or
all in `<root>/images/<filename>`.

Pickle layout: `<root>/mini-imagenet-cache-{train,val,test}.pkl`, each a
dict with "image_data" (uint8 [n, 84, 84, 3]) and "class_dict" (label ->
image indices). Unpickling runs code from the file, so it needs
`DataConfig.allow_pickle=True`.

The real set has 64/16/20 classes x 600 images; smaller folders in the same
layout (test fixtures) are accepted.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import pathlib
import pickle

import numpy as np
from absl import logging

from mamlpp_tf.data import config as config_lib
from mamlpp_tf.data import preprocessing

CSV_FOLDERS = "csv_split_folders"
CSV_IMAGES = "csv_images"
PICKLE = "pickle"
LAYOUTS = (CSV_FOLDERS, CSV_IMAGES, PICKLE)
CSV_HEADER = ["filename", "label"]
PICKLE_NAME = "mini-imagenet-cache-{split}.pkl"

LAYOUT_HELP = (
    "Point data_dir at a folder with {train,val,test}.csv (columns "
    "filename,label) plus the images in {train,val,test}/<label>/ or in "
    "images/, or at a folder with mini-imagenet-cache-{train,val,test}.pkl."
)


@dataclasses.dataclass(frozen=True)
class MiniImagenetClass:
    """One class of the CSV layout: its label and its image files."""

    name: str
    files: tuple[str, ...]


def detect_layout(root: pathlib.Path) -> str:
    """Which of LAYOUTS `root` holds.

    Raises:
      FileNotFoundError: `root` is missing or empty.
      ValueError: the folder matches no layout, or more than one.
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"mini-ImageNet data_dir {str(root)!r} does not exist or is not "
            f"a folder. {LAYOUT_HELP}"
        )
    found = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    if not found:
        raise FileNotFoundError(
            f"mini-ImageNet data_dir {str(root)!r} is empty. {LAYOUT_HELP}"
        )
    csvs = [f"{s}.csv" for s in config_lib.SPLITS]
    pickles = [PICKLE_NAME.format(split=s) for s in config_lib.SPLITS]
    has_csv = [name in found for name in csvs]
    has_pickle = [name in found for name in pickles]
    if any(has_csv) and any(has_pickle):
        raise ValueError(
            f"{str(root)!r} holds both CSV files and pickles; keep one layout "
            f"per folder. {LAYOUT_HELP}"
        )
    if any(has_pickle):
        missing = [
            n for n, ok in zip(pickles, has_pickle, strict=True) if not ok
        ]
        if missing:
            raise FileNotFoundError(
                f"{str(root)!r} lacks {missing}. {LAYOUT_HELP}"
            )
        return PICKLE
    if not any(has_csv):
        raise ValueError(
            f"{str(root)!r} matches no mini-ImageNet layout; found "
            f"{found[:8]}. {LAYOUT_HELP}"
        )
    missing = [n for n, ok in zip(csvs, has_csv, strict=True) if not ok]
    if missing:
        raise FileNotFoundError(f"{str(root)!r} lacks {missing}. {LAYOUT_HELP}")
    has_folders = all((root / s).is_dir() for s in config_lib.SPLITS)
    has_images = (root / "images").is_dir()
    if has_folders and has_images:
        raise ValueError(
            f"{str(root)!r} has both images/ and {{train,val,test}}/ folders; "
            f"keep one. {LAYOUT_HELP}"
        )
    if not (has_folders or has_images):
        raise FileNotFoundError(
            f"{str(root)!r} has the CSV files but neither images/ nor all of "
            f"train/, val/, test/. {LAYOUT_HELP}"
        )
    return CSV_FOLDERS if has_folders else CSV_IMAGES


def _read_csv(path: pathlib.Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != CSV_HEADER:
        raise ValueError(
            f"{str(path)!r} must start with the header 'filename,label', got "
            f"{rows[0] if rows else 'an empty file'}. {LAYOUT_HELP}"
        )
    pairs = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(
                f"{str(path)!r} line {line}: expected 'filename,label', got "
                f"{row}."
            )
        pairs.append((row[0].strip(), row[1].strip()))
    if not pairs:
        raise ValueError(f"{str(path)!r} lists no images. {LAYOUT_HELP}")
    return pairs


def find_csv_classes(
    root: pathlib.Path, layout: str
) -> dict[str, list[MiniImagenetClass]]:
    """Reads the three CSV files and checks that every listed image exists.

    Returns:
      "train", "val", "test" -> classes sorted by label, files in CSV order.

    Raises:
      FileNotFoundError: naming the rows whose files are missing.
      ValueError: a malformed CSV, a duplicate row, or a label in two splits.
    """
    splits, owner = {}, {}
    listings: dict[pathlib.Path, set[str]] = {}

    def exists(path: pathlib.Path) -> bool:
        # One listing per folder: 60,000 stat calls take ~1.5 s, 100
        # listings ~0.1 s (measured).
        folder = path.parent
        if folder not in listings:
            listings[folder] = (
                set(os.listdir(folder)) if folder.is_dir() else set()
            )
        return path.name in listings[folder]

    for split in config_lib.SPLITS:
        csv_path = root / f"{split}.csv"
        files_by_label: dict[str, list[str]] = {}
        seen = set()
        missing = []
        for filename, label in _read_csv(csv_path):
            if filename in seen:
                raise ValueError(f"{str(csv_path)!r} lists {filename!r} twice.")
            seen.add(filename)
            if layout == CSV_FOLDERS:
                path = root / split / label / filename
            else:
                path = root / "images" / filename
            if not exists(path):
                missing.append(str(path))
            files_by_label.setdefault(label, []).append(str(path.absolute()))
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} rows of {str(csv_path)!r} point at missing "
                f"files, e.g. {missing[:3]}. {LAYOUT_HELP}"
            )
        for label in files_by_label:
            if owner.setdefault(label, split) != split:
                raise ValueError(
                    f"Label {label!r} is in both {owner[label]}.csv and "
                    f"{split}.csv; the class splits must be disjoint."
                )
        splits[split] = [
            MiniImagenetClass(name=label, files=tuple(files_by_label[label]))
            for label in sorted(files_by_label)
        ]
    return splits


def fingerprint_csv(root: pathlib.Path, splits) -> str:
    """A hash of the CSV files and of every image's path, size and mtime."""
    digest = hashlib.sha256()
    for split in config_lib.SPLITS:
        digest.update((root / f"{split}.csv").read_bytes())
        for cls in splits[split]:
            for path in cls.files:
                stat = os.stat(path)
                digest.update(
                    f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
                )
    return digest.hexdigest()


def fingerprint_pickles(root: pathlib.Path) -> str:
    """A hash of the pickles' paths, sizes and mtimes (not their 1.3 GB)."""
    digest = hashlib.sha256()
    for split in config_lib.SPLITS:
        path = (root / PICKLE_NAME.format(split=split)).absolute()
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_jpeg(path: str) -> np.ndarray:
    """Reads one image as uint8 [84, 84, 3] (`preprocessing.read_image`).

    Images of another size (the original ImageNet files) are resized with
    the area (box) filter, ignoring the aspect ratio like the authors' code;
    JPEG draft mode first decodes them at the smallest DCT scale >= 84x84.

    Raises:
      ValueError: naming the file, if it cannot be decoded.
    """
    try:
        return preprocessing.read_image(
            path, config_lib.MINI_IMAGENET_IMAGE_SHAPE
        )
    except ValueError as err:
        raise ValueError(
            f"Cannot decode mini-ImageNet image {path!r}: "
            f"{err.__cause__ or err}. Replace or re-extract the file."
        ) from err


def decode_class(files: tuple[str, ...]) -> np.ndarray:
    """uint8 [num_files, 84, 84, 3]: one class's images."""
    return np.stack([decode_jpeg(path) for path in files])


def read_pickle_split(path: pathlib.Path) -> list[tuple[str, np.ndarray]]:
    """Unpickles one split: [(label, uint8 [n, 84, 84, 3])] sorted by label.

    Only call this for files the user opted in to (`allow_pickle`): loading
    a pickle runs code stored in it.

    Raises:
      ValueError: the file does not hold the expected dict.
    """
    logging.warning(
        "Unpickling %s (allow_pickle=True): this runs code stored in the "
        "file; only use pickles you trust.",
        path,
    )
    with open(path, "rb") as f:
        # latin1 reads the Python 2 pickles that are widely shared.
        data = pickle.load(f, encoding="latin1")
    keys = sorted(data) if isinstance(data, dict) else None
    if keys is None or not {"image_data", "class_dict"} <= set(keys):
        raise ValueError(
            f"{str(path)!r} must hold a dict with 'image_data' and "
            f"'class_dict', got {type(data).__name__} with keys {keys}."
        )
    images, class_dict = data["image_data"], data["class_dict"]
    expected = config_lib.MINI_IMAGENET_IMAGE_SHAPE
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.shape[1:] != expected
    ):
        raise ValueError(
            f"{str(path)!r}: 'image_data' must be uint8 [n, "
            f"{', '.join(map(str, expected))}], got "
            f"{getattr(images, 'dtype', type(images).__name__)} "
            f"{getattr(images, 'shape', '')}."
        )
    classes = []
    for label in sorted(class_dict):
        indices = np.asarray(class_dict[label], np.int64)
        if indices.ndim != 1 or indices.size == 0:
            raise ValueError(f"{str(path)!r}: class {label!r} lists no images.")
        if indices.min() < 0 or indices.max() >= images.shape[0]:
            raise ValueError(
                f"{str(path)!r}: class {label!r} indexes images outside "
                f"[0, {images.shape[0]})."
            )
        classes.append((str(label), images[indices]))
    return classes
