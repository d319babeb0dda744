"""Omniglot from the official folder layout: scanning, class splits, decoding.

Layout (Lake et al., 2015; the two official archives unzipped side by side):

    <root>/images_background/<alphabet>/<character>/<id>.png   30 alphabets
    <root>/images_evaluation/<alphabet>/<character>/<id>.png   20 alphabets

1,623 characters x 20 drawings, 105x105, 1-bit.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from mamlpp_tf.data import config as config_lib
from mamlpp_tf.data import fingerprint as fingerprint_lib
from mamlpp_tf.data import preprocessing

BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
SUBSETS = (BACKGROUND, EVALUATION)

# The official archives (github.com/brendenlake/omniglot); their sizes and
# sha256 sums are in checksums.tsv next to this module.
DOWNLOAD_URLS = {
    BACKGROUND: "https://github.com/brendenlake/omniglot/raw/master/python/"
    "images_background.zip",
    EVALUATION: "https://github.com/brendenlake/omniglot/raw/master/python/"
    "images_evaluation.zip",
}

# The authors' code (HowToTrainYourMAMLPytorch, omniglot configs,
# `train_val_test_split`): fractions of the 1,623 pooled characters, giving
# 1,150 / 50 / 423 classes with boundaries int(f0*n) and int((f0+f1)*n).
REFERENCE_SPLIT_FRACTIONS = (0.70918052988, 0.03080714725, 0.2606284658)
# The authors' code does not shuffle with its `val_seed` itself: it draws
# the shuffle's seed from it, RandomState(val_seed).randint(1, 999999)
# (985773 for their val_seed=0), in this half-open range.
REFERENCE_SHUFFLE_SEED_RANGE = (1, 999999)
# "lake" split: validation holds out whole background alphabets, so that,
# like test, it measures transfer to unseen alphabets. 5 of the 30 keeps
# ~1/6 of the background characters for validation.
LAKE_NUM_VAL_ALPHABETS = 5

LAYOUT_HELP = (
    "Point data_dir at the folder holding images_background/<alphabet>/"
    "<character>/*.png and images_evaluation/<alphabet>/<character>/*.png "
    "(the official images_background.zip and images_evaluation.zip unzipped "
    "side by side), or set data_dir=None to download them."
)


@dataclasses.dataclass(frozen=True)
class OmniglotClass:
    """One character: its name, its subset and its drawings.

    Attributes:
      name: "<alphabet>/<character>", e.g. "Greek/character01".
      subset: BACKGROUND or EVALUATION.
      files: absolute paths of its PNGs, sorted.
    """

    name: str
    subset: str
    files: tuple[str, ...]

    @property
    def alphabet(self) -> str:
        """The alphabet folder's name."""
        return self.name.split("/")[0]



def _check_root(root: pathlib.Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(
            f"Omniglot data_dir {str(root)!r} does not exist or is not a "
            f"folder. {LAYOUT_HELP}"
        )
    found = [e.name for e in fingerprint_lib.visible_entries(root)]
    if not found:
        raise FileNotFoundError(
            f"Omniglot data_dir {str(root)!r} is empty. {LAYOUT_HELP}"
        )
    missing = [s for s in SUBSETS if s not in found]
    if missing:
        hint = ""
        if root.name in SUBSETS:
            hint = f" data_dir names {root.name}/ itself: use its parent."
        raise FileNotFoundError(
            f"Omniglot data_dir {str(root)!r} has no {' or '.join(missing)} "
            f"folder; found {found[:8]}.{hint} {LAYOUT_HELP}"
        )


def _scan_character(folder: pathlib.Path, name: str, subset: str):
    files = []
    for entry in fingerprint_lib.visible_entries(folder):
        if not (entry.is_file() and entry.name.lower().endswith(".png")):
            raise ValueError(
                f"Unexpected {entry.path!r}: Omniglot character folders hold "
                f"only .png drawings. Remove it. {LAYOUT_HELP}"
            )
        files.append(os.path.abspath(entry.path))
    if not files:
        raise ValueError(
            f"Omniglot character folder {str(folder)!r} has no .png "
            f"drawings. {LAYOUT_HELP}"
        )
    return OmniglotClass(name=name, subset=subset, files=tuple(files))


def find_classes(subset_dirs: dict[str, pathlib.Path]) -> list[OmniglotClass]:
    """Lists every character of the two subsets, checking the layout.

    Args:
      subset_dirs: BACKGROUND and EVALUATION -> the folder of alphabets.

    Returns:
      The characters, sorted by subset then name.

    Raises:
      FileNotFoundError, ValueError: naming the folder that breaks the layout.
    """
    classes = []
    for subset in SUBSETS:
        subset_dir = subset_dirs[subset]
        alphabets = fingerprint_lib.visible_entries(subset_dir)
        if not alphabets:
            raise FileNotFoundError(
                f"Omniglot folder {str(subset_dir)!r} is empty. {LAYOUT_HELP}"
            )
        for alphabet in alphabets:
            characters = alphabet.is_dir() and fingerprint_lib.visible_entries(
                pathlib.Path(alphabet.path)
            )
            if not characters:
                raise ValueError(
                    f"Expected an alphabet folder of character folders at "
                    f"{alphabet.path!r}. {LAYOUT_HELP}"
                )
            for character in characters:
                if not character.is_dir():
                    raise ValueError(
                        f"Expected a character folder at {character.path!r}. "
                        f"{LAYOUT_HELP}"
                    )
                name = f"{alphabet.name}/{character.name}"
                classes.append(
                    _scan_character(pathlib.Path(character.path), name, subset)
                )
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(
            "An alphabet appears in both images_background and "
            f"images_evaluation. {LAYOUT_HELP}"
        )
    return classes


def find_classes_in_root(root: pathlib.Path) -> list[OmniglotClass]:
    """`find_classes` of root/images_background and root/images_evaluation."""
    _check_root(root)
    return find_classes({s: root / s for s in SUBSETS})


def split_classes(
    classes: list[OmniglotClass], scheme: str, seed: int
) -> dict[str, list[OmniglotClass]]:
    """Splits the characters into train/val/test classes.

    Args:
      classes: every character, as `find_classes` returns them.
      scheme: "reference": the authors' code. It pools all characters
        sorted by "alphabet/character", draws a shuffle seed
        `RandomState(seed).randint(*REFERENCE_SHUFFLE_SEED_RANGE)` (985773
        for seed 0, the authors' val_seed), shuffles the indices with
        `RandomState(shuffle_seed).shuffle` and cuts at int(f0*n) and
        int((f0+f1)*n) for REFERENCE_SPLIT_FRACTIONS. "lake": evaluation
        alphabets are test; of the background alphabets, shuffled with the
        seed, the last LAKE_NUM_VAL_ALPHABETS are val and the rest train.
      seed: the class-split seed.

    Returns:
      "train", "val", "test" -> classes.
    """
    classes = sorted(classes, key=lambda c: c.name)
    if scheme == "reference":
        shuffle_seed = np.random.RandomState(seed).randint(
            *REFERENCE_SHUFFLE_SEED_RANGE
        )
        order = np.arange(len(classes))
        np.random.RandomState(shuffle_seed).shuffle(order)
        shuffled = [classes[i] for i in order]
        f0, f1, _ = REFERENCE_SPLIT_FRACTIONS
        end_train = int(f0 * len(classes))
        end_val = int((f0 + f1) * len(classes))
        splits = {
            "train": shuffled[:end_train],
            "val": shuffled[end_train:end_val],
            "test": shuffled[end_val:],
        }
    elif scheme == "lake":
        background = [c for c in classes if c.subset == BACKGROUND]
        alphabets = sorted({c.alphabet for c in background})
        if len(alphabets) <= LAKE_NUM_VAL_ALPHABETS:
            raise ValueError(
                f"The lake split holds out {LAKE_NUM_VAL_ALPHABETS} background "
                f"alphabets for validation, but only {len(alphabets)} were "
                f"found. Use split_scheme='reference' or the full data."
            )
        rng = np.random.RandomState(seed)
        shuffled = [alphabets[i] for i in rng.permutation(len(alphabets))]
        val_alphabets = set(shuffled[-LAKE_NUM_VAL_ALPHABETS:])
        splits = {
            "train": [c for c in background if c.alphabet not in val_alphabets],
            "val": [c for c in background if c.alphabet in val_alphabets],
            "test": [c for c in classes if c.subset == EVALUATION],
        }
    else:
        raise ValueError(
            f"scheme must be one of {config_lib.SPLIT_SCHEMES}, got {scheme!r}."
        )
    for split, members in splits.items():
        if not members:
            raise ValueError(
                f"The {scheme!r} split of {len(classes)} Omniglot characters "
                f"leaves no {split} classes. Use the full data set."
            )
    return splits


def decode_png(path: str) -> np.ndarray:
    """Reads one drawing: uint8 [28, 28, 1], white (255) background.

    `preprocessing.read_image`: the 1-bit image is converted to 8-bit grey
    first, then resized with the area (box) filter, the exact pixel
    average. (The authors ask Pillow for LANCZOS on the 1-bit image, which
    Pillow silently replaces by NEAREST.)

    Raises:
      ValueError: naming the file, if it cannot be decoded.
    """
    try:
        return preprocessing.read_image(path, config_lib.OMNIGLOT_IMAGE_SHAPE)
    except ValueError as err:
        raise ValueError(
            f"Cannot decode Omniglot image {path!r}: {err.__cause__ or err}. "
            "Replace it with the file from the official archive."
        ) from err


def decode_class(files: tuple[str, ...]) -> np.ndarray:
    """uint8 [num_files, 28, 28, 1]: one character's drawings."""
    return np.stack([decode_png(path) for path in files])
