"""Tests of mamlpp_tf/data/class_images.py."""

import numpy as np
import pytest

from mamlpp_tf.data import ClassImages


def _images(n, shape=(4, 4, 1)):
    return np.zeros((n, *shape), np.uint8)


def test_from_classes_groups_images_by_class():
    first = np.full((2, 4, 4, 1), 1, np.uint8)
    second = np.full((3, 4, 4, 1), 2, np.uint8)
    split = ClassImages.from_classes([first, second], ("a/1", "b/2"))
    np.testing.assert_array_equal(split.class_offsets, [0, 2, 5])
    assert split.class_offsets.dtype == np.int64
    assert split.num_classes == 2
    assert split.image_shape == (4, 4, 1)
    np.testing.assert_array_equal(split.class_sizes, [2, 3])
    np.testing.assert_array_equal(split.class_images(1), second)
    np.testing.assert_array_equal(split.images_tensor.numpy(), split.images)


@pytest.mark.parametrize(
    "images, offsets, names, message",
    [
        (np.zeros((2, 4, 4, 1), np.float32), [0, 2], ("a",), "uint8 numpy"),
        (np.zeros((2, 4, 4), np.uint8), [0, 2], ("a",), r"\[num_images, H, W"),
        (_images(2), np.array([0, 2], np.int32), ("a",), "int64"),
        (_images(3), [0, 2], ("a",), "from 0 to num_images=3"),
        (_images(3), [0, 2, 1, 3], ("a", "b", "c"), "non-decreasing"),
        (_images(3), [1, 3], ("a",), "offsets from 0"),
        (_images(3), [0, 1, 3], ("a",), "Got 1 class_names for 2 classes"),
        (_images(3), [0, 3], ["a"], "tuple of str"),
    ],
)
def test_rejects_inconsistent_arrays(images, offsets, names, message):
    if isinstance(offsets, list):
        offsets = np.array(offsets, np.int64)
    with pytest.raises(ValueError, match=message):
        ClassImages(images=images, class_offsets=offsets, class_names=names)


def test_from_classes_rejects_mismatches():
    with pytest.raises(ValueError, match="2 image arrays for 1 class names"):
        ClassImages.from_classes([_images(1), _images(1)], ("a",))
    with pytest.raises(ValueError, match="share one image shape"):
        ClassImages.from_classes(
            [_images(1), _images(1, (5, 5, 1))], ("a", "b")
        )
    with pytest.raises(ValueError, match="at least one class"):
        ClassImages.from_classes([], ())


def test_from_classes_shares_read_only_memory_with_tensorflow():
    split = ClassImages.from_classes(
        [np.full((2, 4, 4, 1), c, np.uint8) for c in range(3)], ("a", "b", "c")
    )
    with pytest.raises(ValueError, match="read-only"):
        split.images[0] = 9
    assert split.images.ctypes.data % 64 == 0
    np.testing.assert_array_equal(split.images_tensor.numpy(), split.images)


def test_other_arrays_are_copied_into_tensorflow():
    storage = np.arange(4 * 3 * 3 * 1, dtype=np.uint8).reshape(4, 3, 3, 1)
    images = storage[:, :, ::-1]  # Not C-contiguous: cannot be shared.
    split = ClassImages(
        images=images,
        class_offsets=np.array([0, 4], np.int64),
        class_names=("a",),
    )
    np.testing.assert_array_equal(split.images_tensor.numpy(), images)
