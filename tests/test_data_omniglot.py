"""Tests of the Omniglot source: the real data set, and small fake folders."""

import dataclasses
import hashlib
import pathlib
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mamlpp_tf.data import DataConfig
from mamlpp_tf.data import episode_config_for
from mamlpp_tf.data import episode_dataset
from mamlpp_tf.data import load_splits
from mamlpp_tf.data import loading
from mamlpp_tf.data import omniglot
from mamlpp_tf.data import synthetic
from mamlpp_tf.data import tfds_builders

# Lake et al. (2015): 1,623 characters x 20 drawings.
NUM_CHARACTERS = 1623
NUM_DRAWINGS = 20


@pytest.fixture(scope="module")
def real(omniglot_dir, tmp_path_factory):
    """The real Omniglot, prepared once into a temporary TFDS data dir."""
    config = DataConfig(
        dataset="omniglot",
        data_dir=str(omniglot_dir),
        tfds_data_dir=str(tmp_path_factory.mktemp("tfds_omniglot")),
    )
    return config, load_splits(config)


def test_real_split_counts_and_images(real):
    _, splits = real
    counts = [splits[s].num_classes for s in ("train", "val", "test")]
    assert counts == [1150, 50, 423]
    names = [n for s in splits.values() for n in s.class_names]
    assert len(set(names)) == NUM_CHARACTERS
    for split in splits.values():
        np.testing.assert_array_equal(split.class_sizes, NUM_DRAWINGS)
        assert split.image_shape == (28, 28, 1)
        assert split.images.dtype == np.uint8
        # Dark strokes on white paper, both present after the area resize.
        assert split.images.min() == 0 and split.images.max() == 255


# The authors' split (HowToTrainYourMAMLPytorch, val_seed=0), computed from
# their rule outside this code base: the first 16 hex digits of the SHA-256
# of each split's "alphabet/character" names, sorted and joined with "\n".
AUTHORS_SPLIT_SHA256_PREFIX = {
    "train": "196219616f79f9eb",
    "val": "4405936e911116d1",
    "test": "65fbaa9272ed411f",
}
# The start of their test split, in their shuffled order.
AUTHORS_FIRST_TEST_CLASSES = (
    "Sylheti/character11",
    "Hebrew/character07",
    "Aurek-Besh/character18",
)


def _names_digest(names) -> str:
    joined = "\n".join(sorted(names)).encode()
    return hashlib.sha256(joined).hexdigest()[:16]


def test_real_reference_split_is_the_authors(real, omniglot_dir):
    _, splits = real
    digests = {s: _names_digest(splits[s].class_names) for s in splits}
    assert digests == AUTHORS_SPLIT_SHA256_PREFIX
    assert splits["test"].class_names[:3] == AUTHORS_FIRST_TEST_CLASSES
    # Drawing j of a class is the j-th file of its folder, area-resized.
    name = splits["val"].class_names[0]
    png = sorted((pathlib.Path(omniglot_dir) / "images_background").glob(
        f"{name}/*.png"
    )) or sorted((pathlib.Path(omniglot_dir) / "images_evaluation").glob(
        f"{name}/*.png"
    ))
    np.testing.assert_array_equal(
        splits["val"].class_images(0)[3], omniglot.decode_png(str(png[3]))
    )


def test_real_reload_skips_decoding(real, monkeypatch):
    config, splits = real

    def fail(files):
        raise AssertionError("the prepared data must be reused")

    monkeypatch.setattr(omniglot, "decode_class", fail)
    again = load_splits(config)
    np.testing.assert_array_equal(again["test"].images, splits["test"].images)


def test_real_episodes_are_deterministic_in_range_and_rotated_in_training(real):
    _, splits = real
    config = episode_config_for(
        "omniglot", num_ways=20, num_shots=1, meta_batch_size=4, seed=5
    )
    plain = dataclasses.replace(config, augment_rotations=False)

    def first(cfg, split, start_task=0):
        dataset = episode_dataset(
            splits[split], cfg, split=split, start_task=start_task, num_tasks=4
        )
        return next(iter(dataset))["support_x"].numpy()

    rotated = first(config, "train")
    assert rotated.min() == 0.0 and rotated.max() == 1.0
    np.testing.assert_array_equal(rotated, first(config, "train"))
    # The same classes and drawings, each class turned by k*90 degrees.
    unrotated = first(plain, "train")
    turns = set()
    for task in range(4):
        for n in range(20):
            ks = [
                k
                for k in range(4)
                if np.array_equal(
                    rotated[task, n], np.rot90(unrotated[task, n], k)
                )
            ]
            assert ks, "each image must be a rotation of the unrotated one"
            turns.add(ks[0])
    assert turns == {0, 1, 2, 3}
    for split in ("val", "test"):
        np.testing.assert_array_equal(first(config, split), first(plain, split))
        np.testing.assert_array_equal(
            first(config, split, start_task=4),
            first(plain, split, start_task=4),
        )


# Small fake folders in the official layout.


def _write_fake(root, *, background=7, evaluation=2, characters=2, drawings=3):
    """Writes 105x105 1-bit PNG glyphs in the official Omniglot layout."""
    index = 0
    for subset, num_alphabets in (
        (omniglot.BACKGROUND, background),
        (omniglot.EVALUATION, evaluation),
    ):
        for a in range(num_alphabets):
            for c in range(characters):
                folder = (
                    root / subset / f"{subset[7:]}{a}" / f"character{c + 1:02d}"
                )
                folder.mkdir(parents=True)
                images = synthetic.draw_class(0, index, drawings, (105, 105, 1))
                index += 1
                for d, image in enumerate(images):
                    png = folder / f"{index:04d}_{d + 1:02d}.png"
                    synthetic.Image.fromarray(image[:, :, 0]).convert("1").save(
                        png
                    )
    return root


@pytest.fixture
def fake_dir(tmp_path):
    return _write_fake(tmp_path / "omniglot")


def _fake_config(data_dir, tmp_path, **overrides):
    return DataConfig(
        dataset="omniglot",
        data_dir=str(data_dir),
        tfds_data_dir=str(tmp_path / "tfds"),
        **overrides,
    )


def test_lake_split_keeps_alphabets_whole(fake_dir, tmp_path):
    splits = load_splits(_fake_config(fake_dir, tmp_path, split_scheme="lake"))
    alphabets = {
        s: {n.split("/")[0] for n in splits[s].class_names} for s in splits
    }
    assert len(alphabets["val"]) == omniglot.LAKE_NUM_VAL_ALPHABETS
    assert len(alphabets["train"]) == 7 - omniglot.LAKE_NUM_VAL_ALPHABETS
    assert alphabets["test"] == {"evaluation0", "evaluation1"}
    assert all(a.startswith("background") for a in alphabets["train"])
    assert not alphabets["train"] & alphabets["val"]
    np.testing.assert_array_equal(splits["train"].class_sizes, 3)


def test_reference_split_depends_on_the_seed(fake_dir):
    classes = omniglot.find_classes_in_root(fake_dir)
    assert len(classes) == 18
    first = omniglot.split_classes(classes, "reference", seed=0)
    # int(0.709 * 18) = 12 and int(0.740 * 18) = 13.
    assert [len(first[s]) for s in ("train", "val", "test")] == [12, 1, 5]
    # The authors' rule by hand: RandomState(0).randint(1, 999999) = 985773;
    # RandomState(985773).shuffle(arange(18)) ends ..., 17, 1, 14, 5, 16, 10
    # (indices into the 18 names sorted: background0..6, evaluation0..1).
    assert [c.name for c in first["val"]] == ["evaluation1/character02"]
    assert [c.name for c in first["test"]] == [
        "background0/character02",
        "evaluation0/character01",
        "background2/character02",
        "evaluation1/character01",
        "background5/character01",
    ]
    again = omniglot.split_classes(classes, "reference", seed=0)
    other = omniglot.split_classes(classes, "reference", seed=1)
    assert first == again and first != other


def test_data_of_an_older_release_is_prepared_again(fake_dir, tmp_path):
    # 1.0.0 held the old reference split; its folder must never be loaded.
    config = _fake_config(fake_dir, tmp_path)
    current = pathlib.Path(loading.make_builder(config).data_dir)
    assert current.name == "1.1.0"
    load_splits(config)
    current.rename(current.with_name("1.0.0"))
    assert not loading.make_builder(config).data_path.exists()
    load_splits(config)
    assert current.exists(), "the current release must prepare anew"


def test_changed_file_prepares_again(fake_dir, tmp_path):
    config = _fake_config(fake_dir, tmp_path)
    before = loading.make_builder(config).data_dir
    load_splits(config)
    png = sorted(fake_dir.rglob("*.png"))[0]
    blank = synthetic.Image.new("1", (105, 105), 1)
    blank.save(png)
    after = loading.make_builder(config)
    assert after.data_dir != before
    assert not after.data_path.exists(), "a changed source must not reuse data"


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="does not exist.*images_background/<alphabet>"
    ):
        load_splits(_fake_config(tmp_path / "absent", tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        load_splits(_fake_config(tmp_path / "empty", tmp_path))


def test_wrong_layouts_name_the_fix(fake_dir, tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match="has no images_background or images_evaluation.*use its parent",
    ):
        load_splits(_fake_config(fake_dir / omniglot.BACKGROUND, tmp_path))
    character = next((fake_dir / omniglot.EVALUATION).glob("*/*"))
    (character / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt.*only .png"):
        load_splits(_fake_config(fake_dir, tmp_path))
    (character / "notes.txt").unlink()
    for png in character.glob("*.png"):
        png.unlink()
    with pytest.raises(ValueError, match="has no .png drawings"):
        load_splits(_fake_config(fake_dir, tmp_path))


def test_corrupt_png_is_named(fake_dir, tmp_path):
    bad = sorted(fake_dir.rglob("*.png"))[7]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    message = re.escape(f"Cannot decode Omniglot image '{bad}'")
    with pytest.raises(ValueError, match=message):
        load_splits(_fake_config(fake_dir, tmp_path))


def test_offline_download_explains_the_folder_layout(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", offline
    )
    config = DataConfig(dataset="omniglot", tfds_data_dir=str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match="offline.*images_background/<alphabet>"
    ):
        load_splits(config)


def test_download_urls_have_registered_checksums():
    infos = tfds_builders.MamlppOmniglot.url_infos
    for url in omniglot.DOWNLOAD_URLS.values():
        assert len(infos[url].checksum) == 64, url  # sha256 hex digest
        assert infos[url].size > 1_000_000, url


def test_without_data_dir_the_official_archives_are_used(
    fake_dir, tmp_path, monkeypatch
):
    requested = []

    def extracted(self, urls):
        requested.append(dict(urls))
        # Each archive unzips to a folder holding images_<subset>/.
        return {subset: str(fake_dir) for subset in urls}

    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", extracted
    )
    config = DataConfig(dataset="omniglot", tfds_data_dir=str(tmp_path))
    splits = load_splits(config)
    assert requested == [omniglot.DOWNLOAD_URLS]
    assert sum(s.num_classes for s in splits.values()) == 18
    assert loading.make_builder(config).builder_config.name == (
        "reference_seed0_official"
    )
