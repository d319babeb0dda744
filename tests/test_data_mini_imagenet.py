"""Tests of the mini-ImageNet source on small synthetic folders."""

import csv
import dataclasses
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from mamlpp_tf.data import DataConfig
from mamlpp_tf.data import episode_config_for
from mamlpp_tf.data import episode_dataset
from mamlpp_tf.data import load_splits
from mamlpp_tf.data import mini_imagenet
from mamlpp_tf.data import write_mini_imagenet_folder

NUM_CLASSES = (3, 2, 2)
IMAGES_PER_CLASS = 6


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One small folder per layout, all holding the same glyphs."""
    root = tmp_path_factory.mktemp("mini_imagenet")
    return {
        layout: write_mini_imagenet_folder(
            root / layout,
            layout=layout,
            num_classes=NUM_CLASSES,
            images_per_class=IMAGES_PER_CLASS,
        )
        for layout in mini_imagenet.LAYOUTS
    }


@pytest.fixture(scope="module")
def loaded(folders, tmp_path_factory):
    tfds_dir = tmp_path_factory.mktemp("tfds_mini_imagenet")
    return {
        layout: load_splits(
            DataConfig(
                dataset="mini_imagenet",
                data_dir=str(folder),
                tfds_data_dir=str(tfds_dir),
                allow_pickle=layout == mini_imagenet.PICKLE,
            )
        )
        for layout, folder in folders.items()
    }


def _copy(folder, tmp_path):
    """A copy of a shared fixture folder, for a test that damages it."""
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def _config(folder, tmp_path, **overrides):
    return DataConfig(
        dataset="mini_imagenet",
        data_dir=str(folder),
        tfds_data_dir=str(tmp_path / "tfds"),
        **overrides,
    )


def test_every_layout_loads_the_same_classes(loaded):
    reference = loaded[mini_imagenet.PICKLE]
    for layout, splits in loaded.items():
        for split, count in zip(
            ("train", "val", "test"), NUM_CLASSES, strict=True
        ):
            images = splits[split]
            assert images.num_classes == count, (layout, split)
            assert images.image_shape == (84, 84, 3)
            np.testing.assert_array_equal(images.class_sizes, IMAGES_PER_CLASS)
            assert images.class_names == reference[split].class_names
            assert all(re.fullmatch(r"n\d{8}", n) for n in images.class_names)
            # The pickle holds the exact pixels; the CSV layouts JPEG copies.
            error = np.abs(
                images.images.astype(float) - reference[split].images
            ).mean()
            assert error < 3.0, (layout, split, error)
    np.testing.assert_array_equal(
        loaded[mini_imagenet.CSV_FOLDERS]["val"].images,
        loaded[mini_imagenet.CSV_IMAGES]["val"].images,
    )


def test_episodes_are_imagenet_normalised(loaded):
    splits = loaded[mini_imagenet.CSV_IMAGES]
    config = episode_config_for(
        "mini_imagenet", num_ways=2, num_shots=1, meta_batch_size=2
    )
    assert config.num_queries == 15
    with pytest.raises(
        ValueError, match=r"fewer than num_shots \+ num_queries = 16"
    ):
        episode_dataset(splits["test"], config, split="test", num_tasks=2)
    config = dataclasses.replace(config, num_queries=5)
    batch = next(
        iter(episode_dataset(splits["test"], config, split="test", num_tasks=2))
    )
    assert batch["query_x"].shape == (2, 10, 84, 84, 3)
    x = batch["support_x"].numpy()
    # Pixels in [0, 1] map into [(0 - mean) / std, (1 - mean) / std].
    assert x.min() >= (0 - 0.485) / 0.229 - 1e-5
    assert x.max() <= (1 - 0.406) / 0.225 + 1e-5
    assert x.min() < 0 < x.max()


def test_pickles_need_an_explicit_opt_in(folders, tmp_path):
    with pytest.raises(
        ValueError, match="Unpickling runs code.*allow_pickle=True"
    ):
        load_splits(_config(folders[mini_imagenet.PICKLE], tmp_path))


def test_missing_empty_and_unknown_folders(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="does not exist.*train,val,test"
    ):
        load_splits(_config(tmp_path / "absent", tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        load_splits(_config(tmp_path / "empty", tmp_path))
    other = tmp_path / "other"
    (other / "n01").mkdir(parents=True)
    with pytest.raises(
        ValueError, match=r"matches no mini-ImageNet layout; found \['n01'\]"
    ):
        load_splits(_config(other, tmp_path))


def test_csv_rows_pointing_at_missing_files(folders, tmp_path):
    folder = _copy(folders[mini_imagenet.CSV_FOLDERS], tmp_path)
    victim = sorted((folder / "val").rglob("*.jpg"))[2]
    victim.unlink()
    with pytest.raises(
        FileNotFoundError, match=f"1 rows of .*val.csv.*{victim.name}"
    ):
        load_splits(_config(folder, tmp_path))


def test_corrupt_jpeg_is_named(folders, tmp_path):
    folder = _copy(folders[mini_imagenet.CSV_IMAGES], tmp_path)
    victim = sorted((folder / "images").glob("*.jpg"))[4]
    victim.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ValueError, match=re.escape(f"image '{victim}'")):
        load_splits(_config(folder, tmp_path))


def test_malformed_csv_and_ambiguous_layouts(folders, tmp_path):
    folder = _copy(folders[mini_imagenet.CSV_IMAGES], tmp_path)
    (folder / "test.csv").write_text("file,class\nx.jpg,n1\n")
    with pytest.raises(
        ValueError, match="must start with the header 'filename,label'"
    ):
        load_splits(_config(folder, tmp_path))
    (folder / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks \['test.csv'\]"):
        load_splits(_config(folder, tmp_path))
    both = _copy(folders[mini_imagenet.CSV_FOLDERS], tmp_path)
    (both / "images").mkdir()
    with pytest.raises(ValueError, match="both images/ and"):
        load_splits(_config(both, tmp_path))


def test_small_class_and_too_many_ways_are_named(folders, tmp_path):
    folder = _copy(folders[mini_imagenet.CSV_IMAGES], tmp_path)
    with open(folder / "train.csv", newline="") as f:
        rows = list(csv.reader(f))
    small_label = rows[1][1]
    kept = [r for r in rows if r[1] != small_label] + [
        r for r in rows if r[1] == small_label
    ][:2]
    with open(folder / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(kept)
    splits = load_splits(_config(folder, tmp_path))
    config = episode_config_for(
        "mini_imagenet", num_ways=3, num_shots=1, meta_batch_size=1
    )
    config = dataclasses.replace(config, num_queries=2)
    with pytest.raises(ValueError, match=f"'{small_label}' \\(2 images\\)"):
        episode_dataset(splits["train"], config, split="train")
    with pytest.raises(
        ValueError, match="num_ways=3 but the val split has only 2"
    ):
        episode_dataset(splits["val"], config, split="val", num_tasks=1)


def test_original_size_images_are_resized(tmp_path):
    folder = write_mini_imagenet_folder(
        tmp_path / "big",
        layout=mini_imagenet.CSV_IMAGES,
        num_classes=(1, 1, 1),
        images_per_class=2,
    )
    victim = sorted((folder / "images").glob("*.jpg"))[0]
    Image.new("RGB", (500, 375), (10, 200, 30)).save(victim)
    splits = load_splits(_config(folder, tmp_path))
    image = splits["train"].class_images(0)[0]
    assert image.shape == (84, 84, 3)
    np.testing.assert_allclose(image.mean(axis=(0, 1)), (10, 200, 30), atol=3)
