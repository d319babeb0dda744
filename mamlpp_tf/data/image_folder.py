"""Your own images: a folder of class folders, scanned, checked and split.

Two layouts of `data_dir` (the folder name is the class name; hidden
entries, whose names start with ".", are skipped):

    <data_dir>/train/<class>/<image>     already split: train/, val/ and
    <data_dir>/val/<class>/<image>       test/ hold disjoint classes
    <data_dir>/test/<class>/<image>      (DataConfig.split_fractions=None)

    <data_dir>/<class>/<image>           one folder of classes, split by
                                         `split_classes` (split_fractions)

Every file in a class folder must be an image that Pillow reads (PNG, JPEG,
BMP, GIF, WebP, TIFF, ...). `preprocessing.read_image` turns each into what
the network sees. Nothing in the folder is ever modified.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib

import numpy as np
from PIL import Image

from mamlpp_tf.data import config as config_lib
from mamlpp_tf.data import fingerprint as fingerprint_lib
from mamlpp_tf.data import parallel_decode
from mamlpp_tf.data import preprocessing

SPLIT_FOLDERS = "split_folders"
ONE_FOLDER = "one_folder"
CLASS_SPLIT_FILENAME = "class_split.json"
# How many offending files or classes an error message lists by name.
NUM_NAMED = 20
# Classes per worker task when checking headers or decoding.
CHUNKSIZE = 4

LAYOUT_HELP = (
    "Point data_dir at a folder with train/, val/ and test/, each holding "
    "one folder of images per class; or at one folder of class folders and "
    "set split_fractions (--split_fractions=0.7,0.1,0.2) to split its "
    "classes. Class folders hold only image files."
)


@dataclasses.dataclass(frozen=True)
class FolderClass:
    """One class: its folder's name and its image files (absolute, sorted)."""

    name: str
    files: tuple[str, ...]



def _named(items, count: int | None = None) -> str:
    """'a', 'b', ... and N more: the first NUM_NAMED of `items`."""
    items = list(items)
    count = len(items) if count is None else count
    text = ", ".join(map(str, items[:NUM_NAMED]))
    if count > NUM_NAMED:
        text += f" and {count - NUM_NAMED} more"
    return text


def _scan_classes(folder: pathlib.Path) -> list[FolderClass]:
    """The class folders of `folder` and their files.

    Raises:
      ValueError: an entry that is not a class folder, a class folder that
        holds a folder, or an empty class folder.
    """
    classes, empty = [], []
    for entry in fingerprint_lib.visible_entries(folder):
        if not entry.is_dir():
            raise ValueError(
                f"Unexpected file {entry.path!r}: {str(folder)!r} must hold "
                f"only class folders. Move it out. {LAYOUT_HELP}"
            )
        files = []
        for item in fingerprint_lib.visible_entries(pathlib.Path(entry.path)):
            if not item.is_file():
                raise ValueError(
                    f"Unexpected {item.path!r}: a class folder holds only "
                    f"image files, not folders or broken links. {LAYOUT_HELP}"
                )
            files.append(os.path.abspath(item.path))
        if not files:
            empty.append(entry.path)
            continue
        classes.append(FolderClass(name=entry.name, files=tuple(files)))
    if empty:
        raise ValueError(
            f"{len(empty)} class folder(s) hold no images: "
            f"{_named(map(repr, empty))}. "
            "Add images or remove them."
        )
    if not classes:
        raise FileNotFoundError(
            f"{str(folder)!r} holds no class folders. {LAYOUT_HELP}"
        )
    return classes


def detect_layout(root: pathlib.Path, split_fractions) -> str:
    """SPLIT_FOLDERS or ONE_FOLDER, as `split_fractions` says; checked.

    Raises:
      FileNotFoundError: `root` is missing or empty, or a split is missing.
      ValueError: the folder does not match what `split_fractions` says.
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder data_dir {str(root)!r} does not exist or is not a "
            f"folder. {LAYOUT_HELP}"
        )
    found = [e.name for e in fingerprint_lib.visible_entries(root)]
    if not found:
        raise FileNotFoundError(
            f"Image folder data_dir {str(root)!r} is empty. {LAYOUT_HELP}"
        )
    splits = [s for s in config_lib.SPLITS if s in found]
    if split_fractions is not None:
        if splits:
            raise ValueError(
                f"{str(root)!r} holds {', '.join(f'{s}/' for s in splits)}, "
                "so it looks already split, but split_fractions is set. "
                "Remove --split_fractions to use its train/, val/ and test/ "
                "folders, or rename those class folders."
            )
        return ONE_FOLDER
    missing = [s for s in config_lib.SPLITS if s not in found]
    if not splits:
        raise FileNotFoundError(
            f"{str(root)!r} has no train/, val/ or test/ folder (found "
            f"{_named(found, len(found))}). If it is one folder of class "
            "folders, set --split_fractions=0.7,0.1,0.2 (train, val, test) "
            f"to split its classes. {LAYOUT_HELP}"
        )
    if missing:
        raise FileNotFoundError(
            f"{str(root)!r} has {', '.join(f'{s}/' for s in splits)} but no "
            f"{' or '.join(f'{s}/' for s in missing)}: every split needs its "
            f"own classes. {LAYOUT_HELP}"
        )
    not_folders = [s for s in config_lib.SPLITS if not (root / s).is_dir()]
    if not_folders:
        raise ValueError(
            f"{', '.join(repr(str(root / s)) for s in not_folders)} must be "
            f"a folder of class folders. {LAYOUT_HELP}"
        )
    others = [name for name in found if name not in config_lib.SPLITS]
    if others:
        raise ValueError(
            f"{str(root)!r} holds train/, val/ and test/ and also "
            f"{_named(others)}; move those out (or into a split). "
            f"{LAYOUT_HELP}"
        )
    return SPLIT_FOLDERS


def round_half_up(x: float) -> int:
    """The integer nearest to x >= 0, halves up (no banker's rounding)."""
    return int(np.floor(x + 0.5))


def split_classes(
    classes: list[FolderClass],
    fractions: tuple[float, float, float],
    seed: int,
) -> dict[str, list[FolderClass]]:
    """Splits one folder's classes into train/val/test: the seeded rule.

    The n classes are sorted by name and shuffled with
    `numpy.random.RandomState(seed).permutation(n)`; the first
    round(f_train * n) are train, the classes up to
    round((f_train + f_val) * n) are val, the rest test (round: nearest,
    halves up). E.g. 10 classes at (0.7, 0.1, 0.2) give 7 / 1 / 2.

    Raises:
      ValueError: a split would get no class.
    """
    classes = sorted(classes, key=lambda c: c.name)
    n = len(classes)
    order = np.random.RandomState(seed).permutation(n)
    shuffled = [classes[i] for i in order]
    end_train = round_half_up(fractions[0] * n)
    end_val = round_half_up((fractions[0] + fractions[1]) * n)
    splits = {
        "train": shuffled[:end_train],
        "val": shuffled[end_train:end_val],
        "test": shuffled[end_val:],
    }
    counts = {split: len(members) for split, members in splits.items()}
    if not all(counts.values()):
        raise ValueError(
            f"split_fractions={tuple(fractions)} of {n} classes gives "
            f"{counts} classes: every split needs at least one (and at least "
            "num_ways to draw tasks). Add classes or raise the fraction of "
            "the empty split."
        )
    return splits


def find_splits(
    data_config: config_lib.DataConfig,
) -> tuple[str, dict[str, list[FolderClass]]]:
    """(layout, "train"/"val"/"test" -> classes) of the configured folder.

    Raises:
      FileNotFoundError, ValueError: naming what breaks the layout.
    """
    root = pathlib.Path(data_config.data_dir)
    layout = detect_layout(root, data_config.split_fractions)
    if layout == ONE_FOLDER:
        splits = split_classes(
            _scan_classes(root),
            data_config.split_fractions,
            data_config.seed,
        )
        return layout, splits
    splits = {s: _scan_classes(root / s) for s in config_lib.SPLITS}
    owner = {}
    for split, classes in splits.items():
        for cls in classes:
            owner.setdefault(cls.name, []).append(split)
    shared = {name: where for name, where in owner.items() if len(where) > 1}
    if shared:
        listed = _named(f"{n!r} ({', '.join(w)})" for n, w in shared.items())
        raise ValueError(
            f"{len(shared)} class(es) are in more than one split of "
            f"{str(root)!r}: {listed}. The splits must hold disjoint classes "
            "(test classes are new to the model): rename or move them."
        )
    return layout, splits


def fingerprint(layout: str, splits: dict[str, list[FolderClass]]) -> str:
    """A hash of the layout, each split's classes and every file's path,
    size and mtime: changes with the folder and with the split."""
    digest = hashlib.sha256(f"{layout}\n".encode())
    for split in config_lib.SPLITS:
        for cls in splits[split]:
            digest.update(f"{split}\0{cls.name}\n".encode())
        digest.update(fingerprint_lib.fingerprint(splits[split]).encode())
    return digest.hexdigest()


def check_feasible(splits: dict[str, list[FolderClass]], episode) -> None:
    """Checks, from the file counts, that every split yields `episode`'s tasks.

    The same conditions as `episodes.validate_episode_feasible`, before any
    image is decoded, listing every class that is too small.

    Raises:
      ValueError: a split with fewer than num_ways classes, or classes with
        fewer than num_shots + num_queries images.
    """
    needed = episode.num_shots + episode.num_queries
    for split, classes in splits.items():
        if len(classes) < episode.num_ways:
            raise ValueError(
                f"num_ways={episode.num_ways} but the {split} split has only "
                f"{len(classes)} classes. Add classes to {split}, raise its "
                "split fraction or lower --num_ways."
            )
        small = [c for c in classes if len(c.files) < needed]
        if small:
            listed = _named(f"{c.name!r} ({len(c.files)})" for c in small)
            raise ValueError(
                f"{len(small)} classes of the {split} split have fewer than "
                f"num_shots + num_queries = {needed} images: {listed}. Add "
                "images, remove those classes, or lower --num_shots/"
                "--num_queries."
            )


def _class_headers(files: tuple[str, ...]) -> list[tuple[str, str, object]]:
    """(path, Pillow mode or "", transparency or the error) of each file."""
    headers = []
    for path in files:
        try:
            with Image.open(path) as image:
                transparent = preprocessing.has_transparency(image)
                headers.append((path, image.mode, transparent))
        except Exception as err:  # Pillow raises OSError, SyntaxError, ...
            headers.append((path, "", f"{type(err).__name__}: {err}"))
    return headers


def check_images(splits: dict[str, list[FolderClass]]) -> None:
    """Reads every file's header; refuses what cannot be decoded uniformly.

    Catches files that are not images, images of more than 8 bits per
    channel, and a mix of images with and without transparent pixels (their
    backgrounds would differ: transparent pixels become white, while an
    opaque image keeps its own background). Corrupt image data past the
    header is caught when the images are decoded.

    Raises:
      ValueError: naming the files.
    """
    classes = [c for split in config_lib.SPLITS for c in splits[split]]
    headers = [
        header
        for class_headers in parallel_decode.imap_ordered(
            _class_headers, [c.files for c in classes], chunksize=CHUNKSIZE
        )
        for header in class_headers
    ]
    unreadable = [(p, err) for p, mode, err in headers if not mode]
    if unreadable:
        listed = _named(f"{p!r} ({err})" for p, err in unreadable)
        raise ValueError(
            f"{len(unreadable)} file(s) are not images that Pillow can read: "
            f"{listed}. Class folders hold only images: remove or replace "
            "them."
        )
    deep = [
        (p, m) for p, m, _ in headers if m in preprocessing.HIGH_BIT_DEPTH_MODES
    ]
    if deep:
        raise ValueError(preprocessing.high_bit_depth_message(deep))
    with_alpha = [p for p, _, t in headers if t]
    if not with_alpha or len(with_alpha) == len(headers):
        return  # No mix: all opaque, or all composited onto white alike.
    # An alpha channel that is opaque everywhere (common in RGBA PNGs)
    # changes nothing; only really transparent pixels make a mix.
    transparent = [
        p
        for p, is_transparent in zip(
            with_alpha,
            parallel_decode.imap_ordered(
                has_transparent_pixels, with_alpha, chunksize=CHUNKSIZE
            ),
            strict=True,
        )
        if is_transparent
    ]
    if transparent:
        opaque = sorted(set(p for p, _, _ in headers) - set(transparent))
        raise ValueError(
            f"The folder mixes {len(transparent)} image(s) with transparent "
            f"pixels (e.g. {_named(map(repr, transparent[:3]))}) and "
            f"{len(opaque)} opaque ones (e.g. "
            f"{_named(map(repr, opaque[:3]))}). Transparent pixels "
            "become white, while the opaque images keep their own "
            "background, so the background would tell the two apart. "
            "Flatten the transparent images onto the background the others "
            "have (e.g. ImageMagick: mogrify -background white -flatten), "
            "or make every image transparent where it has no content."
        )


def has_transparent_pixels(path: str) -> bool:
    """Whether any pixel of the image file is not fully opaque."""
    with Image.open(path) as image:
        alpha = image.convert("RGBA").getchannel("A")
        return alpha.getextrema()[0] < 255


def decode_class(
    image_shape: tuple[int, int, int], files: tuple[str, ...]
) -> np.ndarray:
    """uint8 [num_files, H, W, C]: one class's images, as the network sees
    them (`preprocessing.read_image`)."""
    return np.stack([preprocessing.read_image(p, image_shape) for p in files])


def decode_classes(classes: list[FolderClass], image_shape):
    """Yields each class's `decode_class`, in order, decoded in parallel."""
    return parallel_decode.imap_ordered(
        functools.partial(decode_class, tuple(image_shape)),
        [c.files for c in classes],
        chunksize=CHUNKSIZE,
    )


def write_class_split(
    data_config: config_lib.DataConfig,
    class_names: dict[str, tuple[str, ...]],
    workdir: str | os.PathLike,
) -> pathlib.Path:
    """Writes `workdir/class_split.json`: the classes of every split.

    Args:
      data_config: the image folder's config (its layout and split rule).
      class_names: "train", "val", "test" -> the split's class names.
      workdir: the run directory.
    """
    one_folder = data_config.split_fractions is not None
    values = {
        "data_dir": data_config.data_dir,
        "layout": ONE_FOLDER if one_folder else SPLIT_FOLDERS,
        "rule": (
            "classes sorted by name, shuffled with numpy.random.RandomState("
            "seed).permutation, cut at round_half_up(f_train * n) and "
            "round_half_up((f_train + f_val) * n)"
            if one_folder
            else "the train/, val/ and test/ folders"
        ),
        "split_fractions": data_config.split_fractions,
        "seed": data_config.seed if one_folder else None,
        **{split: list(class_names[split]) for split in config_lib.SPLITS},
    }
    path = pathlib.Path(workdir) / CLASS_SPLIT_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
