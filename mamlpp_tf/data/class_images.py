"""One class split held in memory: class-grouped uint8 images."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf

# TensorFlow's CPU allocator alignment (Allocator::kAllocatorAlignment);
# a buffer aligned to it can be shared with TensorFlow without a copy.
TF_ALIGNMENT = 64


@dataclasses.dataclass(frozen=True, eq=False)
class ClassImages:
    """The images of one split, grouped by class.

    Kept as uint8 (Omniglot ~25 MB, mini-ImageNet ~1.3 GB); episodes convert
    to float32 per task.

    Attributes:
      images: uint8 [num_images, H, W, C]; class c is
        `images[class_offsets[c]:class_offsets[c + 1]]`.
      class_offsets: int64 [num_classes + 1], starting at 0, non-decreasing,
        ending at num_images.
      class_names: num_classes names, e.g. "Greek/character01" or
        "n01532829".
    """

    images: np.ndarray
    class_offsets: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        images, offsets = self.images, self.class_offsets
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise ValueError(
                "images must be a uint8 numpy array, got "
                f"{type(images).__name__} of {getattr(images, 'dtype', None)}."
            )
        if images.ndim != 4:
            raise ValueError(
                "images must be [num_images, H, W, C], got shape "
                f"{images.shape}."
            )
        if not isinstance(offsets, np.ndarray) or offsets.dtype != np.int64:
            raise ValueError(
                "class_offsets must be an int64 numpy array, got "
                f"{type(offsets).__name__} of "
                f"{getattr(offsets, 'dtype', None)}."
            )
        if (
            offsets.ndim != 1
            or offsets.size < 2
            or offsets[0] != 0
            or offsets[-1] != images.shape[0]
            or np.any(np.diff(offsets) < 0)
        ):
            raise ValueError(
                "class_offsets must be non-decreasing [num_classes + 1] "
                f"offsets from 0 to num_images={images.shape[0]}, got "
                f"{offsets[:5]}... of shape {offsets.shape}."
            )
        if not isinstance(self.class_names, tuple) or not all(
            isinstance(n, str) for n in self.class_names
        ):
            raise ValueError(
                "class_names must be a tuple of str, got "
                f"{type(self.class_names).__name__}."
            )
        if len(self.class_names) != offsets.size - 1:
            raise ValueError(
                f"Got {len(self.class_names)} class_names for "
                f"{offsets.size - 1} classes in class_offsets; pass one name "
                "per class."
            )

    @property
    def num_classes(self) -> int:
        """Classes in the split."""
        return self.class_offsets.size - 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(int(s) for s in self.images.shape[1:])

    @functools.cached_property
    def images_tensor(self) -> tf.Tensor:
        """`images` as a uint8 tf.Tensor, made once and shared by pipelines.

        Shares `images`' memory (DLPack, no copy) when the array is
        C-contiguous, writable and 64-byte aligned, as `from_classes` makes
        it; otherwise copies it once. Copying mini-ImageNet's 1.3 GB into
        TensorFlow takes 3-6 s on 2 CPUs (measured).
        """
        images = self.images
        if (
            images.flags.c_contiguous
            and images.flags.writeable
            and images.ctypes.data % TF_ALIGNMENT == 0
        ):
            return tf.experimental.dlpack.from_dlpack(images.__dlpack__())
        return tf.constant(images)

    @property
    def class_sizes(self) -> np.ndarray:
        """int64 [num_classes]: images per class."""
        return np.diff(self.class_offsets)

    def class_images(self, index: int) -> np.ndarray:
        """uint8 [n, H, W, C]: the images of class `index`."""
        start, stop = self.class_offsets[index], self.class_offsets[index + 1]
        return self.images[start:stop]

    @classmethod
    def from_classes(
        cls, per_class: list[np.ndarray], class_names: tuple[str, ...]
    ) -> ClassImages:
        """Concatenates per-class uint8 [n_c, H, W, C] arrays.

        The result's `images` is aligned for TensorFlow, shared with
        `images_tensor` and read-only, so the two cannot diverge.

        Raises:
          ValueError: on a length mismatch or differing image shapes.
        """
        if len(per_class) != len(class_names):
            raise ValueError(
                f"Got {len(per_class)} image arrays for {len(class_names)} "
                "class names; pass one array per class."
            )
        if not per_class:
            raise ValueError("A split needs at least one class, got none.")
        shapes = {a.shape[1:] for a in per_class}
        if len(shapes) != 1:
            raise ValueError(
                f"All classes must share one image shape, got {sorted(shapes)}."
            )
        sizes = np.array([a.shape[0] for a in per_class], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        images = _aligned_empty((int(offsets[-1]), *shapes.pop()))
        np.concatenate(per_class, axis=0, out=images)
        result = cls(
            images=images, class_offsets=offsets, class_names=tuple(class_names)
        )
        # DLPack cannot export a read-only array: share the memory first
        # (the tensor is cached on `result`), then freeze it.
        _ = result.images_tensor
        images.flags.writeable = False
        return result


def _aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised uint8 array whose data starts on TF_ALIGNMENT."""
    size = int(np.prod(shape))
    buffer = np.empty(size + TF_ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % TF_ALIGNMENT
    return buffer[start : start + size].reshape(shape)
