"""TFDS builders: each source prepared once into the TFDS data dir.

One TFDS example is one class: {"images": uint8 [n, H, W, C], "class_name",
"class_index"}, so loading a split reads a few hundred large records, not
tens of thousands of small ones. The splits are "train", "val", "test".

The builder config's name keys the prepared data by everything that changes
it (a fingerprint of the raw files, the split scheme, the seed, the
synthetic sizes), so a changed source or setting prepares anew instead of
loading stale data. TFDS writes into a temporary folder and renames it when
done, so an interrupted preparation leaves nothing that a rerun would load.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mamlpp_tf.data import config as config_lib
from mamlpp_tf.data import image_folder
from mamlpp_tf.data import mini_imagenet
from mamlpp_tf.data import omniglot
from mamlpp_tf.data import parallel_decode
from mamlpp_tf.data import synthetic

# Bumped whenever what a prepared split holds changes, so that data prepared
# by an older release is never loaded: TFDS reads only VERSION's folder.
VERSION = tfds.core.Version("1.1.0")
RELEASE_NOTES = {
    "1.0.0": "One example per class; area-resized uint8 images.",
    "1.1.0": "Omniglot 'reference' split: the authors' exact class split "
    "(shuffle seed drawn from the split seed, as their code does).",
}
# Omniglot classes per worker task: 20 PNGs each, a few ms per class.
OMNIGLOT_CHUNKSIZE = 8


@dataclasses.dataclass(eq=False)
class ClassSplitsConfig(tfds.core.BuilderConfig):
    """A builder config carrying the `DataConfig` it prepares.

    Attributes:
      data_config: the settings to prepare.
      image_shape: (H, W, C) of the stored images.
    """

    data_config: config_lib.DataConfig | None = dataclasses.field(
        default=None,
        repr=False,  # TFDS logs the config; keep it short.
    )
    image_shape: tuple[int, int, int] = config_lib.OMNIGLOT_IMAGE_SHAPE


class _ClassSplitsBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared features and example layout of the three sources."""

    VERSION = VERSION
    RELEASE_NOTES = RELEASE_NOTES
    # TFDS finds checksums.tsv next to `code_path`. Its own lookup of
    # `code_path` imports `importlib_resources`, which TFDS 4.9.10 requires
    # only on Python < 3.9 but imports on every version; naming the path
    # here avoids that missing dependency.
    code_path = epath.Path(__file__)
    _ENCODING = tfds.features.Encoding.ZLIB
    _DESCRIPTION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        height, width, channels = self.builder_config.image_shape
        images = tfds.features.Tensor(
            shape=(None, height, width, channels),
            dtype=np.uint8,
            encoding=self._ENCODING,
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "images": images,  # uint8 [n, H, W, C]
                    "class_name": tfds.features.Text(),
                    "class_index": np.int64,
                }
            ),
            # Keep the class order: class_index i is written i-th.
            disable_shuffling=True,
        )

    @staticmethod
    def _examples(names, arrays):
        """(key, example) per class; `arrays` yields uint8 [n, H, W, C]."""
        for index, (name, images) in enumerate(zip(names, arrays, strict=True)):
            yield (
                index,
                {
                    "images": images,
                    "class_name": name,
                    "class_index": index,
                },
            )


class MamlppOmniglot(_ClassSplitsBuilder):
    """Omniglot characters as classes, 28x28 grey, split by `split_scheme`."""

    _DESCRIPTION = "Omniglot (Lake et al., 2015) for MAML++: 28x28 uint8."

    def _split_generators(self, dl_manager):
        data_config = self.builder_config.data_config
        if data_config.data_dir is None:
            classes = omniglot.find_classes(_download_omniglot(dl_manager))
        else:
            classes = omniglot.find_classes_in_root(
                pathlib.Path(data_config.data_dir)
            )
        splits = omniglot.split_classes(
            classes, data_config.split_scheme, data_config.seed
        )
        return {
            split: self._generate_examples(members)
            for split, members in splits.items()
        }

    def _generate_examples(self, classes):
        arrays = parallel_decode.imap_ordered(
            omniglot.decode_class,
            [c.files for c in classes],
            chunksize=OMNIGLOT_CHUNKSIZE,
        )
        return self._examples([c.name for c in classes], arrays)


def _download_omniglot(dl_manager) -> dict[str, pathlib.Path]:
    """Downloads and extracts the official archives (sha256: checksums.tsv)."""
    try:
        extracted = dl_manager.download_and_extract(omniglot.DOWNLOAD_URLS)
    except Exception as err:  # Offline, proxy, checksum: re-raised below.
        raise FileNotFoundError(
            f"Could not download the official Omniglot archives ({err!r}). "
            f"If this machine is offline, fetch {omniglot.DOWNLOAD_URLS} "
            f"elsewhere and unzip both into one folder. "
            f"{omniglot.LAYOUT_HELP}"
        ) from err
    return {
        subset: pathlib.Path(extracted[subset]) / subset
        for subset in omniglot.SUBSETS
    }


class MamlppMiniImagenet(_ClassSplitsBuilder):
    """mini-ImageNet, Ravi & Larochelle split, 84x84 RGB."""

    _DESCRIPTION = "mini-ImageNet (Vinyals et al., 2016; Ravi & Larochelle)."
    # Natural images barely compress; raw bytes load fastest.
    _ENCODING = tfds.features.Encoding.BYTES

    def _split_generators(self, dl_manager):
        data_config = self.builder_config.data_config
        root = pathlib.Path(data_config.data_dir)
        layout = mini_imagenet.detect_layout(root)
        if layout == mini_imagenet.PICKLE:
            return {
                split: self._generate_pickle_examples(
                    root / mini_imagenet.PICKLE_NAME.format(split=split)
                )
                for split in config_lib.SPLITS
            }
        splits = mini_imagenet.find_csv_classes(root, layout)
        return {
            split: self._generate_examples(members)
            for split, members in splits.items()
        }

    def _generate_examples(self, classes):
        arrays = parallel_decode.imap_ordered(
            mini_imagenet.decode_class, [c.files for c in classes]
        )
        return self._examples([c.name for c in classes], arrays)

    def _generate_pickle_examples(self, path):
        # A generator, so that each split's pickle is read only when TFDS
        # writes that split.
        classes = mini_imagenet.read_pickle_split(path)
        yield from self._examples(
            [name for name, _ in classes], (images for _, images in classes)
        )


class MamlppSynthetic(_ClassSplitsBuilder):
    """Random stroke glyphs (see `synthetic`), any size and shape."""

    _DESCRIPTION = "Synthetic stroke glyphs for tests and demos."

    def _split_generators(self, dl_manager):
        data_config = self.builder_config.data_config
        names = synthetic.class_names(data_config.synthetic_num_classes)
        first = 0
        generators = {}
        for split in config_lib.SPLITS:
            indices = range(first, first + len(names[split]))
            first += len(names[split])
            generators[split] = self._generate_examples(names[split], indices)
        return generators

    def _generate_examples(self, names, indices):
        data_config = self.builder_config.data_config
        draw = functools.partial(
            _draw_synthetic_class,
            data_config.seed,
            data_config.synthetic_images_per_class,
            data_config.synthetic_image_shape,
        )
        arrays = parallel_decode.imap_ordered(draw, indices)
        return self._examples(names, arrays)


class MamlppImageFolder(_ClassSplitsBuilder):
    """A folder of class folders (see `image_folder`), any size and mode,
    resized to the configured (H, W, C) by `preprocessing.read_image`."""

    _DESCRIPTION = "Your own images: one folder per class."

    @property
    def _ENCODING(self):
        # Grey drawings compress well; natural (RGB) images barely do, and
        # raw bytes load fastest.
        if self.builder_config.image_shape[2] == 1:
            return tfds.features.Encoding.ZLIB
        return tfds.features.Encoding.BYTES

    def _split_generators(self, dl_manager):
        _, splits = image_folder.find_splits(self.builder_config.data_config)
        return {
            split: self._generate_examples(members)
            for split, members in splits.items()
        }

    def _generate_examples(self, classes):
        arrays = image_folder.decode_classes(
            classes, self.builder_config.image_shape
        )
        return self._examples([c.name for c in classes], arrays)


def _draw_synthetic_class(seed, num_images, shape, class_index):
    return synthetic.draw_class(seed, class_index, num_images, shape)
