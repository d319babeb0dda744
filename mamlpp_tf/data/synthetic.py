"""Generated, learnable classes: random stroke glyphs.

Each class is a glyph of a few random quadratic strokes (and, for RGB, an
ink and a paper colour); each image redraws the glyph with its control
points jittered and shifted, like a new drawing of an Omniglot character.
Images of one class are therefore closer to each other than to other
classes, so a few-shot learner can learn them. Used by tests and to try
the library without a download; `write_mini_imagenet_folder` also writes
such images in the mini-ImageNet layouts.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
import pickle

import numpy as np
from PIL import Image, ImageDraw

from mamlpp_tf.data import config as config_lib
from mamlpp_tf.data import mini_imagenet
from mamlpp_tf.data import parallel_decode

# Glyph geometry, in units of the image side. Chosen by eye so that strokes
# stay inside the image and a 28x28 glyph looks like an Omniglot drawing.
NUM_STROKES = 3
CONTROL_POINT_RANGE = (0.15, 0.85)
POINT_JITTER = 0.04  # per-image std of each control point
SHIFT_JITTER = 0.04  # per-image std of the whole glyph's position
STROKE_WIDTH = 0.08
# Strokes are drawn at this multiple of the image size, then area-resized,
# which anti-aliases them.
SUPERSAMPLING = 4
CURVE_SEGMENTS = 12
# The real mini-ImageNet class count per split (Ravi & Larochelle, 2017).
MINI_IMAGENET_NUM_CLASSES = (64, 16, 20)
MINI_IMAGENET_IMAGES_PER_CLASS = 600


def _class_rng(seed: int, class_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, class_index])


def _curve(points: np.ndarray) -> np.ndarray:
    """The quadratic Bezier of 3 control points: [CURVE_SEGMENTS + 1, 2]."""
    t = np.linspace(0.0, 1.0, CURVE_SEGMENTS + 1)[:, None]
    p0, p1, p2 = points
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def draw_class(
    seed: int, class_index: int, num_images: int, shape: tuple[int, int, int]
) -> np.ndarray:
    """The images of one synthetic class: uint8 [num_images, H, W, C].

    A pure function of (seed, class_index, num_images, shape).
    """
    height, width, channels = shape
    rng = _class_rng(seed, class_index)
    glyph = rng.uniform(*CONTROL_POINT_RANGE, size=(NUM_STROKES, 3, 2))
    ink, paper = rng.uniform(0, 255, size=(2, 3))
    big = (width * SUPERSAMPLING, height * SUPERSAMPLING)
    line_width = max(1, round(STROKE_WIDTH * min(big)))
    images = np.empty((num_images, height, width, channels), np.uint8)
    for i in range(num_images):
        points = glyph + rng.normal(0, POINT_JITTER, glyph.shape)
        points = points + rng.normal(0, SHIFT_JITTER, (1, 1, 2))
        canvas = Image.new("L", big, 0)
        draw = ImageDraw.Draw(canvas)
        for stroke in points:
            xy = _curve(stroke) * np.array(big)
            draw.line([tuple(p) for p in xy], fill=255, width=line_width)
        mask = (
            np.asarray(
                canvas.resize((width, height), Image.Resampling.BOX), np.float32
            )[:, :, None]
            / 255.0
        )  # [H, W, 1]
        if channels == 1:  # Omniglot-like: dark ink on white paper.
            pixels = 255.0 * (1.0 - mask)
        else:
            pixels = mask * ink + (1.0 - mask) * paper  # [H, W, 3]
        images[i] = np.round(pixels).astype(np.uint8)
    return images


def class_names(num_classes: tuple[int, int, int]) -> dict[str, list[str]]:
    """Class names per split; class j overall is "glyph{j:05d}"."""
    names, start = {}, 0
    for split, count in zip(config_lib.SPLITS, num_classes, strict=True):
        names[split] = [f"glyph{j:05d}" for j in range(start, start + count)]
        start += count
    return names


def write_mini_imagenet_folder(
    root: str | pathlib.Path,
    *,
    layout: str,
    num_classes: tuple[int, int, int] = MINI_IMAGENET_NUM_CLASSES,
    images_per_class: int = MINI_IMAGENET_IMAGES_PER_CLASS,
    seed: int = 0,
) -> pathlib.Path:
    """Writes synthetic glyphs in a mini-ImageNet layout, for tests/benchmarks.

    Args:
      root: the folder to create (it may exist and be empty).
      layout: one of `mini_imagenet.LAYOUTS`: "csv_split_folders"
        ({split}.csv + {split}/<label>/<file>.jpg), "csv_images"
        ({split}.csv + images/<file>.jpg) or "pickle"
        (mini-imagenet-cache-{split}.pkl).
      num_classes: (train, val, test) classes; the real set has (64, 16, 20).
      images_per_class: 600 in the real set.
      seed: generation seed.

    Returns:
      The root as a Path. Labels look like wnids ("n9000000j"), files like
      the Ravi & Larochelle names ("<label><index:08d>.jpg").
    """
    if layout not in mini_imagenet.LAYOUTS:
        raise ValueError(
            f"layout must be one of {mini_imagenet.LAYOUTS}, got {layout!r}."
        )
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, count in zip(config_lib.SPLITS, num_classes, strict=True):
        jobs = [
            _ClassJob(root, split, layout, seed, j, images_per_class)
            for j in range(start, start + count)
        ]
        start += count
        # Drawing and JPEG-encoding the real size (60,000 images) takes
        # about a minute in one process.
        results = list(parallel_decode.imap_ordered(_write_class, jobs))
        if layout == mini_imagenet.PICKLE:
            _write_pickle(root, split, [job.label for job in jobs], results)
        else:
            rows = [row for class_rows in results for row in class_rows]
            path = root / f"{split}.csv"
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(mini_imagenet.CSV_HEADER)
                writer.writerows(rows)
    return root


@dataclasses.dataclass(frozen=True)
class _ClassJob:
    root: pathlib.Path
    split: str
    layout: str
    seed: int
    class_index: int
    num_images: int

    @property
    def label(self) -> str:
        return f"n{90000000 + self.class_index:08d}"


def _write_class(job: _ClassJob):
    """Draws one class; returns its images (pickle) or its CSV rows."""
    shape = config_lib.MINI_IMAGENET_IMAGE_SHAPE
    images = draw_class(job.seed, job.class_index, job.num_images, shape)
    if job.layout == mini_imagenet.PICKLE:
        return images
    if job.layout == mini_imagenet.CSV_FOLDERS:
        folder = job.root / job.split / job.label
    else:
        folder = job.root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, image in enumerate(images):
        filename = f"{job.label}{i:08d}.jpg"
        Image.fromarray(image).save(folder / filename, quality=95)
        rows.append((filename, job.label))
    return rows


def _write_pickle(root, split, labels, arrays) -> None:
    sizes = [len(a) for a in arrays]
    starts = np.cumsum([0] + sizes[:-1])
    data = {
        "image_data": np.concatenate(arrays),
        "class_dict": {
            label: list(range(s, s + n))
            for label, s, n in zip(labels, starts, sizes, strict=True)
        },
    }
    path = root / mini_imagenet.PICKLE_NAME.format(split=split)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
