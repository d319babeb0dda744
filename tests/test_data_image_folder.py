"""Your own images: both layouts, the seeded split, and every bad folder."""

import dataclasses
import hashlib
import json
import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from mamlpp_tf.data import DataConfig
from mamlpp_tf.data import episode_config_for
from mamlpp_tf.data import episode_dataset
from mamlpp_tf.data import image_folder
from mamlpp_tf.data import image_shape_for
from mamlpp_tf.data import load_splits
from mamlpp_tf.data import loading

IMAGE_SIZE = (4, 5)
IMAGES_PER_CLASS = 3


def _value(class_index, image_index):
    """The grey level of image i of class c: a known pixel value."""
    return 10 * class_index + image_index


def _write_class(folder, class_index, count=IMAGES_PER_CLASS):
    """Uniform grey images of varied sizes and formats (uniform survives
    any resize unchanged)."""
    folder.mkdir(parents=True)
    formats = ("png", "bmp", "gif")
    for i in range(count):
        value = _value(class_index, i)
        size = (6 + i, 7 + class_index % 3)  # (W, H) as Pillow counts.
        Image.new("L", size, value).save(folder / f"{i}.{formats[i % 3]}")


def write_split_folders(root, num_classes=(4, 3, 3)):
    """train/, val/, test/ of class folders; class j overall is c{j:02d}."""
    j = 0
    for split, count in zip(("train", "val", "test"), num_classes):
        for _ in range(count):
            _write_class(root / split / f"c{j:02d}", j)
            j += 1
    return root


def write_one_folder(root, num_classes=10):
    for j in range(num_classes):
        _write_class(root / f"c{j:02d}", j)
    return root


def _config(data_dir, tmp_path, **overrides):
    values = dict(
        dataset="image_folder",
        data_dir=str(data_dir),
        tfds_data_dir=str(tmp_path / "tfds"),
        image_size=IMAGE_SIZE,
        image_channels=1,
    )
    values.update(overrides)
    return DataConfig(**values)


def _episode(num_ways=2, num_shots=1, num_queries=1):
    config = episode_config_for(
        "image_folder",
        num_ways=num_ways,
        num_shots=num_shots,
        meta_batch_size=1,
    )
    return dataclasses.replace(config, num_queries=num_queries)


def _snapshot(root):
    """Every entry under root: its path, and for files size, mtime, sha256."""
    result = {}
    for path in sorted(pathlib.Path(root).rglob("*")):
        stat = path.stat()
        result[str(path)] = (
            (
                stat.st_size,
                stat.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
            if path.is_file()
            else "dir"
        )
    return result


def test_split_folders_load_with_their_classes_and_pixels(tmp_path):
    root = write_split_folders(tmp_path / "images")
    before = _snapshot(root)
    config = _config(root, tmp_path)
    assert image_shape_for(config) == (4, 5, 1)
    splits = load_splits(config, episode_config=_episode())
    assert {s: c.class_names for s, c in splits.items()} == {
        "train": ("c00", "c01", "c02", "c03"),
        "val": ("c04", "c05", "c06"),
        "test": ("c07", "c08", "c09"),
    }
    test = splits["test"]
    assert test.images.shape == (9, 4, 5, 1)
    # Class c08, image 2 (sorted by file name): grey 10 * 8 + 2.
    np.testing.assert_array_equal(test.class_images(1)[2], 82)
    np.testing.assert_array_equal(splits["train"].class_sizes, 3)
    assert _snapshot(root) == before, "the folder must not be modified"


def test_rgb_channels_and_the_episode_pipeline(tmp_path):
    root = write_split_folders(tmp_path / "images")
    config = _config(root, tmp_path, image_channels=3)
    splits = load_splits(config)
    assert splits["val"].image_shape == (4, 5, 3)
    batch = next(
        iter(
            episode_dataset(
                splits["val"], _episode(num_ways=3), split="val", num_tasks=1
            )
        )
    )
    # Pixels in [0, 1]: every value is one of the val classes' grey levels.
    levels = {round(float(v) * 255) for v in np.unique(batch["query_x"])}
    assert levels <= {_value(c, i) for c in (4, 5, 6) for i in range(3)}
    assert batch["support_x"].shape == (1, 3, 4, 5, 3)


def test_one_folder_split_is_the_documented_seeded_rule(tmp_path):
    root = write_one_folder(tmp_path / "images")
    config = _config(root, tmp_path, split_fractions=(0.7, 0.1, 0.2))
    splits = load_splits(config)
    # RandomState(0).permutation(10) = [2, 8, 4, 9, 1, 6, 7, 3, 0, 5];
    # 10 classes at (0.7, 0.1, 0.2): round(7) = 7 train, round(8) = 8.
    assert {s: c.class_names for s, c in splits.items()} == {
        "train": ("c02", "c08", "c04", "c09", "c01", "c06", "c07"),
        "val": ("c03",),
        "test": ("c00", "c05"),
    }
    other = load_splits(dataclasses.replace(config, seed=1))
    assert other["test"].class_names != splits["test"].class_names


@pytest.mark.parametrize(
    "num_classes, fractions, counts",
    [
        (10, (0.7, 0.1, 0.2), [7, 1, 2]),  # 0.7 + 0.1 < 0.8 in binary
        (5, (0.5, 0.25, 0.25), [3, 1, 1]),  # 2.5 -> 3, 3.75 -> 4
        (7, (0.6, 0.2, 0.2), [4, 2, 1]),  # 4.2 -> 4, 5.6 -> 6
    ],
)
def test_split_counts_round_half_up(num_classes, fractions, counts):
    classes = [
        image_folder.FolderClass(name=f"c{j}", files=("x",))
        for j in range(num_classes)
    ]
    splits = image_folder.split_classes(classes, fractions, seed=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == counts


def test_split_leaving_a_split_empty_is_refused(tmp_path):
    root = write_one_folder(tmp_path / "images", num_classes=4)
    config = _config(root, tmp_path, split_fractions=(0.8, 0.1, 0.1))
    # round(3.2) = 3 train, round(3.6) = 4: val gets 1, test none.
    with pytest.raises(ValueError, match="'test': 0.*Add classes or raise"):
        load_splits(config)
    assert not (tmp_path / "tfds").exists()


def test_class_split_file(tmp_path):
    config = _config(tmp_path, tmp_path, split_fractions=(0.7, 0.1, 0.2))
    names = {"train": ("a", "b"), "val": ("c",), "test": ("d",)}
    path = image_folder.write_class_split(config, names, tmp_path / "run")
    values = json.loads(path.read_text())
    assert path.name == "class_split.json"
    assert values["layout"] == "one_folder" and values["seed"] == 0
    assert values["split_fractions"] == [0.7, 0.1, 0.2]
    assert (values["train"], values["val"], values["test"]) == (
        ["a", "b"],
        ["c"],
        ["d"],
    )


def test_reload_skips_decoding_and_a_changed_folder_prepares_again(
    tmp_path, monkeypatch
):
    root = write_split_folders(tmp_path / "images")
    config = _config(root, tmp_path)
    first = load_splits(config)

    def fail(*args):
        raise AssertionError("the prepared data must be reused")

    monkeypatch.setattr(image_folder, "decode_class", fail)
    monkeypatch.setattr(image_folder, "_class_headers", fail)
    again = load_splits(config)
    np.testing.assert_array_equal(again["test"].images, first["test"].images)
    monkeypatch.undo()

    # Edit one image: new pixels, new size and mtime.
    victim = root / "test" / "c07" / "0.png"
    Image.new("L", (9, 9), 200).save(victim)
    os.utime(victim, ns=(1, 1))
    changed = load_splits(config)
    np.testing.assert_array_equal(changed["test"].class_images(0)[0], 200)
    # Add an image to a class.
    Image.new("L", (3, 3), 201).save(root / "test" / "c07" / "3.png")
    added = load_splits(config)
    np.testing.assert_array_equal(added["test"].class_sizes, [4, 3, 3])
    # Other sizes or channels are prepared apart.
    resized = load_splits(dataclasses.replace(config, image_size=(3, 3)))
    assert resized["test"].image_shape == (3, 3, 1)


def _refused(config, exception, pattern, *, episode=None):
    """Loading raises `exception` matching `pattern`; nothing is written."""
    with pytest.raises(exception, match=pattern):
        load_splits(config, episode_config=episode)
    assert not pathlib.Path(config.tfds_data_dir).exists()


def test_missing_split_and_layout_mismatches(tmp_path):
    root = write_split_folders(tmp_path / "images")
    before = _snapshot(root)
    (root / "val").rename(tmp_path / "elsewhere")
    _refused(
        _config(root, tmp_path), FileNotFoundError, "train/, test/ but no val/"
    )
    (tmp_path / "elsewhere").rename(root / "val")
    _refused(
        _config(root, tmp_path, split_fractions=(0.7, 0.1, 0.2)),
        ValueError,
        "looks already split, but split_fractions is set",
    )
    one = write_one_folder(tmp_path / "one")
    _refused(
        _config(one, tmp_path),
        FileNotFoundError,
        r"no train/, val/ or test/ folder .*--split_fractions=0.7,0.1,0.2",
    )
    _refused(
        _config(tmp_path / "nowhere", tmp_path),
        FileNotFoundError,
        "does not exist",
    )
    assert _snapshot(root) == before


def test_small_classes_are_all_listed_before_anything_is_written(tmp_path):
    root = write_split_folders(tmp_path / "images", num_classes=(4, 2, 2))
    for name in ("c01", "c03"):
        for extra in sorted((root / "train" / name).iterdir())[1:]:
            extra.unlink()
    _refused(
        _config(root, tmp_path),
        ValueError,
        r"2 classes of the train split have fewer than num_shots \+ "
        r"num_queries = 2 images: 'c01' \(1\), 'c03' \(1\)",
        episode=_episode(num_ways=2),
    )


def test_too_few_classes_for_num_ways(tmp_path):
    root = write_split_folders(tmp_path / "images", num_classes=(4, 2, 3))
    _refused(
        _config(root, tmp_path),
        ValueError,
        "num_ways=3 but the val split has only 2 classes",
        episode=_episode(num_ways=3),
    )


def test_unreadable_files_are_named(tmp_path):
    root = write_split_folders(tmp_path / "images")
    notes = root / "train" / "c01" / "notes.txt"
    notes.write_text("hello")
    fake = root / "test" / "c08" / "fake.jpg"
    fake.write_bytes(b"\xff\xd8 not really")
    _refused(
        _config(root, tmp_path),
        ValueError,
        f"2 file.* not images that Pillow can read: '{notes}'.*'{fake}'",
    )


def test_corrupt_image_data_is_named_and_nothing_is_left(tmp_path):
    root = write_split_folders(tmp_path / "images")
    victim = root / "val" / "c05" / "0.png"
    Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    ).save(victim)
    victim.write_bytes(victim.read_bytes()[:200])  # The header survives.
    _refused(
        _config(root, tmp_path),
        ValueError,
        re.escape(f"Cannot decode image '{victim}'"),
    )


def test_mixed_transparency_and_high_bit_depth_are_refused(tmp_path):
    root = write_split_folders(tmp_path / "images")
    # An opaque alpha channel changes nothing: accepted.
    rgba = np.full((5, 5, 4), 255, np.uint8)
    Image.fromarray(rgba).save(root / "train" / "c00" / "opaque.png")
    splits = load_splits(_config(root, tmp_path / "ok"))
    assert splits["train"].class_sizes[0] == 4
    rgba[0, 0, 3] = 0
    clear = root / "train" / "c00" / "clear.png"
    Image.fromarray(rgba).save(clear)
    _refused(
        _config(root, tmp_path),
        ValueError,
        f"mixes 1 image\\(s\\) with transparent pixels \\(e.g. '{clear}'\\) "
        "and 31 opaque",
    )
    clear.unlink()
    deep = root / "val" / "c04" / "deep.png"
    Image.fromarray(np.full((3, 3), 3000, np.uint16)).save(deep)
    _refused(
        _config(root, tmp_path),
        ValueError,
        f"more than 8 bits per channel, e.g. '{deep}' \\(I;16",
    )


def test_empty_nested_and_shared_classes_are_refused(tmp_path):
    root = write_split_folders(tmp_path / "images")
    (root / "train" / "empty").mkdir()
    _refused(_config(root, tmp_path), ValueError, "hold no images: .*empty")
    (root / "train" / "empty").rmdir()
    (root / "train" / "c00" / "nested").mkdir()
    _refused(_config(root, tmp_path), ValueError, "Unexpected .*nested")
    (root / "train" / "c00" / "nested").rmdir()
    (root / "val" / "README.txt").write_text("classes")
    _refused(_config(root, tmp_path), ValueError, "Unexpected file .*README")
    (root / "val" / "README.txt").unlink()
    _write_class(root / "test" / "c01", 1)
    _refused(
        _config(root, tmp_path),
        ValueError,
        r"1 class\(es\) are in more than one split.*'c01' \(train, test\)",
    )


def test_config_requires_size_and_channels_for_folders_only(tmp_path):
    with pytest.raises(ValueError, match="needs image_size"):
        DataConfig(dataset="image_folder", data_dir="x", image_channels=1)
    with pytest.raises(ValueError, match=r"image_channels in \(1, 3\)"):
        DataConfig(
            dataset="image_folder",
            data_dir="x",
            image_size=(8, 8),
            image_channels=2,
        )
    with pytest.raises(ValueError, match="needs data_dir"):
        DataConfig(dataset="image_folder", image_size=(8, 8), image_channels=1)
    with pytest.raises(ValueError, match="summing to 1"):
        _config("x", tmp_path, split_fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="each > 0"):
        _config("x", tmp_path, split_fractions=(0.9, 0.1, 0.0))
    with pytest.raises(
        ValueError, match="image_size only apply to dataset='image_folder'"
    ):
        DataConfig(dataset="omniglot", image_size=(28, 28))
    # config.json holds lists: they become tuples again.
    config = _config(
        "x", tmp_path, image_size=[4, 5], split_fractions=[0.7, 0.1, 0.2]
    )
    assert config.image_size == (4, 5)
    assert config.split_fractions == (0.7, 0.1, 0.2)


def test_builder_name_keys_layout_shape_and_content(tmp_path):
    root = write_one_folder(tmp_path / "images")
    config = _config(root, tmp_path, split_fractions=(0.7, 0.1, 0.2))
    name = loading.make_builder(config).builder_config.name
    assert name.startswith("one_folder_4x5x1_")
    # Another split of the same files is other data.
    other = dataclasses.replace(config, split_fractions=(0.6, 0.2, 0.2))
    assert loading.make_builder(other).builder_config.name != name
