"""`load_splits`: prepare a source with TFDS once, then load it into memory."""

from __future__ import annotations

import pathlib
import time

import tensorflow_datasets as tfds
from absl import logging

from mamlpp_tf.data import config as config_lib
from mamlpp_tf.data import episodes
from mamlpp_tf.data import fingerprint
from mamlpp_tf.data import image_folder
from mamlpp_tf.data import mini_imagenet
from mamlpp_tf.data import omniglot
from mamlpp_tf.data import tfds_builders
from mamlpp_tf.data.class_images import ClassImages

# Hex digits of a source fingerprint kept in the builder config name.
FINGERPRINT_LENGTH = 16


def _config_name(data_config: config_lib.DataConfig) -> str:
    """Names the prepared data by everything that changes it.

    Reading the raw folder here also checks its layout, so a bad folder
    fails before TFDS starts.
    """
    dataset = data_config.dataset
    if dataset == "synthetic":
        train, val, test = data_config.synthetic_num_classes
        height, width, channels = data_config.synthetic_image_shape
        return (
            f"classes{train}_{val}_{test}_"
            f"images{data_config.synthetic_images_per_class}_"
            f"shape{height}_{width}_{channels}_seed{data_config.seed}"
        )
    if dataset == "image_folder":
        layout, splits = image_folder.find_splits(data_config)
        height, width, channels = config_lib.image_shape_for(data_config)
        digest = image_folder.fingerprint(layout, splits)
        return (
            f"{layout}_{height}x{width}x{channels}_"
            f"{digest[:FINGERPRINT_LENGTH]}"
        )
    root = (
        None
        if data_config.data_dir is None
        else pathlib.Path(data_config.data_dir)
    )
    if dataset == "omniglot":
        scheme = f"{data_config.split_scheme}_seed{data_config.seed}"
        if root is None:  # The archives are sha256-checked: fixed content.
            return f"{scheme}_official"
        digest = fingerprint.fingerprint(omniglot.find_classes_in_root(root))
        return f"{scheme}_{digest[:FINGERPRINT_LENGTH]}"
    layout = mini_imagenet.detect_layout(root)
    if layout == mini_imagenet.PICKLE:
        if not data_config.allow_pickle:
            raise ValueError(
                f"{str(root)!r} holds mini-ImageNet pickles. Unpickling runs "
                "code stored in the file: set allow_pickle=True only if you "
                "trust it, or use the CSV layout ({train,val,test}.csv and "
                "the images)."
            )
        digest = mini_imagenet.fingerprint_pickles(root)
    else:
        splits = mini_imagenet.find_csv_classes(root, layout)
        digest = mini_imagenet.fingerprint_csv(root, splits)
    return f"{layout}_{digest[:FINGERPRINT_LENGTH]}"


_BUILDERS = {
    "omniglot": tfds_builders.MamlppOmniglot,
    "mini_imagenet": tfds_builders.MamlppMiniImagenet,
    "synthetic": tfds_builders.MamlppSynthetic,
    "image_folder": tfds_builders.MamlppImageFolder,
}


def make_builder(
    data_config: config_lib.DataConfig,
) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `data_config`, keyed by its source fingerprint.

    Raises:
      FileNotFoundError, ValueError: the raw data is missing or malformed.
    """
    builder_config = tfds_builders.ClassSplitsConfig(
        name=_config_name(data_config),
        description=f"{data_config.dataset} prepared by mamlpp_tf.data",
        data_config=data_config,
        image_shape=config_lib.image_shape_for(data_config),
    )
    return _BUILDERS[data_config.dataset](
        config=builder_config, data_dir=data_config.tfds_data_dir
    )


def _read_split(builder: tfds.core.DatasetBuilder, split: str) -> ClassImages:
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    per_class, names, indices = [], [], []
    for example in tfds.as_numpy(dataset):
        per_class.append(example["images"])
        names.append(example["class_name"].decode("utf-8"))
        indices.append(int(example["class_index"]))
    if indices != list(range(len(indices))):
        raise ValueError(
            f"The prepared {split} split in {builder.data_dir} is out of "
            "order or incomplete; delete that folder to prepare it again."
        )
    return ClassImages.from_classes(per_class, tuple(names))


def _check_image_folder(
    data_config: config_lib.DataConfig,
    builder: tfds.core.DatasetBuilder,
    episode_config: config_lib.EpisodeConfig | None,
) -> None:
    """What can be checked before an image folder is prepared."""
    _, splits = image_folder.find_splits(data_config)
    if episode_config is not None:
        image_folder.check_feasible(splits, episode_config)
    if not builder.is_prepared():
        image_folder.check_images(splits)


def _prepare(builder: tfds.core.DatasetBuilder) -> None:
    """`download_and_prepare`, leaving no new folder behind if it fails.

    TFDS writes into a temporary folder that it deletes on failure (a
    corrupt image named mid-way, an interrupt), but it leaves the empty
    folders it created around it; remove those too.
    """
    root = pathlib.Path(builder.data_dir_root)
    data_path = pathlib.Path(builder.data_path)
    # Outermost first; TFDS creates these on its way to the version folder.
    created = [
        p
        for p in (
            root,
            root / "downloads",
            root / "downloads" / "extracted",
            data_path.parent.parent,
            data_path.parent,
        )
        if not p.exists()
    ]
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False,  # Not on GCS; avoid the network.
                # Refuse any download whose sha256 is not in checksums.tsv.
                force_checksums_validation=True,
            )
        )
    except BaseException:
        for path in reversed(created):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise


def load_splits(
    data_config: config_lib.DataConfig,
    *,
    episode_config: config_lib.EpisodeConfig | None = None,
) -> dict[str, ClassImages]:
    """Prepares the source with TFDS if needed, then loads every split.

    The first call decodes the raw images into the TFDS data dir (with a
    progress bar; safe to interrupt and rerun). Later calls with the same
    source and settings only read the prepared records; a changed source
    (a file added, removed, edited or moved) is prepared again.

    Args:
      data_config: the source and the class split.
      episode_config: if given, every split is checked to yield its tasks
        (`validate_episode_feasible`); for an image folder this is checked
        from the file counts before anything is decoded or written.

    Returns:
      "train", "val", "test" -> `ClassImages` (uint8, class-grouped).

    Raises:
      FileNotFoundError: the raw data is missing (or, for Omniglot without
        data_dir, cannot be downloaded).
      ValueError: the raw data has an unexpected layout or a corrupt file,
        each error naming the path; or the splits cannot yield the tasks
        of `episode_config`.
    """
    start = time.perf_counter()
    builder = make_builder(data_config)
    if data_config.dataset == "image_folder":
        _check_image_folder(data_config, builder, episode_config)
    _prepare(builder)
    prepared = time.perf_counter()
    splits = {split: _read_split(builder, split) for split in config_lib.SPLITS}
    if episode_config is not None:
        for split, class_images in splits.items():
            episodes.validate_episode_feasible(
                class_images, episode_config, split
            )
    logging.info(
        "%s: checked and prepared in %.1f s, loaded in %.1f s from %s: %s",
        data_config.dataset,
        prepared - start,
        time.perf_counter() - prepared,
        builder.data_dir,
        {
            s: f"{c.num_classes} classes, {c.images.shape[0]} images"
            for s, c in splits.items()
        },
    )
    return splits
