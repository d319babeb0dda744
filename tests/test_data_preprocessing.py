"""What the network sees: decoding, colour, transparency, resizing, scale."""

import re

import numpy as np
import pytest
from PIL import Image

from mamlpp_tf.data import preprocessing


def _save(tmp_path, name, array, mode=None, **params):
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path, **params)
    return str(path)


def test_rgb_becomes_itu_601_grey_and_grey_repeats_over_rgb(tmp_path):
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    path = _save(tmp_path, "red.png", red)
    # Pillow's L = (19595 R + 38470 G + 7471 B + 2**15) >> 16 (ITU-R 601-2
    # luma in 16-bit fixed point): (19595 * 255 + 32768) >> 16 = 76.
    np.testing.assert_array_equal(
        preprocessing.read_image(path, (2, 2, 1)), np.full((2, 2, 1), 76)
    )
    grey = _save(tmp_path, "grey.png", np.full((2, 2), 37, np.uint8))
    np.testing.assert_array_equal(
        preprocessing.read_image(grey, (2, 2, 3)), np.full((2, 2, 3), 37)
    )


def test_area_filter_averages_the_covered_pixels(tmp_path):
    # A 4x4 image of 2x2 blocks {10, 20, 30, 40} -> means 25 per block.
    block = np.array([[10, 20], [30, 40]], np.uint8)
    image = np.block([[block, block + 100], [block + 50, block + 150]])
    path = _save(tmp_path, "blocks.png", image.astype(np.uint8))
    np.testing.assert_array_equal(
        preprocessing.read_image(path, (2, 2, 1))[..., 0],
        [[25, 125], [75, 175]],
    )
    # The aspect ratio is not kept: 4x4 -> 1 row x 2 columns, each the mean
    # of one half: (10+20+30+40+60+70+80+90)/8 = 50 and 150.
    np.testing.assert_array_equal(
        preprocessing.read_image(path, (1, 2, 1))[..., 0], [[50, 150]]
    )


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)  # black ink
    rgba[0, :, 3] = [0, 255, 128]  # transparent, opaque, half
    path = _save(tmp_path, "ink.png", rgba)
    # Over white: 255 * (1 - alpha / 255) = 255, 0 and 255 - 128 = 127.
    np.testing.assert_array_equal(
        preprocessing.read_image(path, (1, 3, 1))[0, :, 0], [255, 0, 127]
    )
    # A palette image with a transparent colour key: the same rule.
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 0, 0])
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "key.png", transparency=0)
    np.testing.assert_array_equal(
        preprocessing.read_image(str(tmp_path / "key.png"), (1, 2, 3))[0],
        [[255, 255, 255], [200, 0, 0]],
    )


def test_high_bit_depth_and_broken_files_are_named(tmp_path):
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((2, 2), 4000, np.uint16)).save(deep)
    with pytest.raises(ValueError, match=r"more than 8 bits.*deep.png.*I;16"):
        preprocessing.read_image(str(deep), (2, 2, 1))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(
        ValueError, match=re.escape(f"Cannot decode image '{text}'")
    ):
        preprocessing.read_image(str(text), (2, 2, 1))
    with pytest.raises(ValueError, match="must end in 1 or 3 channels"):
        preprocessing.read_image(str(text), (2, 2, 2))


def test_scale_pixels():
    images = np.array([0, 51, 255], np.uint8).reshape(3, 1, 1, 1)
    np.testing.assert_allclose(
        preprocessing.scale_pixels(images, "none")[:, 0, 0, 0],
        [0.0, 0.2, 1.0],
        rtol=1e-6,
    )
    white = np.full((1, 1, 1, 3), 255, np.uint8)
    # (1 - mean) / std per channel: 0.515 / 0.229, 0.544 / 0.224,
    # 0.594 / 0.225.
    np.testing.assert_allclose(
        preprocessing.scale_pixels(white, "imagenet")[0, 0, 0],
        [2.2489083, 2.4285714, 2.64],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="needs RGB images"):
        preprocessing.scale_pixels(images, "imagenet")


def test_description_round_trips_and_refuses_other_versions():
    described = preprocessing.describe((28, 28, 1), "none")
    assert described["color_mode"] == "L"
    assert described["resize_filter"] == "box"
    assert preprocessing.check_described(described) == ((28, 28, 1), "none")
    with pytest.raises(ValueError, match="preprocessing version 0"):
        preprocessing.check_described({**described, "version": 0})
    with pytest.raises(ValueError, match="differs from what this"):
        preprocessing.check_described({**described, "resize_filter": "lanczos"})
