"""What the network sees: one image file -> uint8 pixels -> float32 input.

The single definition of the preprocessing, used when a source is prepared
(Omniglot, mini-ImageNet, image folders), by the episode pipeline, and by
prediction with an exported model, so that a model sees the same pixels in
training, evaluation and prediction.

`read_image(path, (H, W, C))`:
  1. Pillow decodes the file (PNG, JPEG, BMP, GIF, WebP, TIFF, ...; the
     first frame of an animation). A JPEG is decoded at the smallest DCT
     scale that is still at least H x W (Pillow's draft mode).
  2. An image with transparency is composited onto white, as a browser
     shows it on a white page.
  3. It is converted to grey ("L", ITU-R 601-2 luma) for C = 1 or to RGB
     for C = 3 (a grey image is repeated over the 3 channels).
  4. It is resized to H x W with the area (box) filter: each output pixel
     is the mean of the input pixels it covers (exact for downscaling; it
     repeats pixels when upscaling). The aspect ratio is not kept; crop the
     images first if it matters. EXIF orientation tags are ignored: the
     pixels are used as stored.
  16-bit and floating-point images are refused: their scale to 8 bits is
  ambiguous.

`scale_pixels(images, normalization)`: uint8 -> float32 pixel / 255, then
for "imagenet" the per-channel ImageNet mean and std.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from PIL import Image

from mamlpp_tf.data import config as config_lib

# Bumped whenever what `read_image` or `scale_pixels` compute changes, so
# that prediction refuses a model exported with other preprocessing.
PREPROCESSING_VERSION = 1
RESIZE_FILTER = Image.Resampling.BOX
RESIZE_FILTER_NAME = "box"
# Transparent pixels are composited onto this colour (white).
BACKGROUND = (255, 255, 255, 255)
COLOR_MODES = {1: "L", 3: "RGB"}
# Pillow modes of more than 8 bits per channel: refused.
HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
PIXEL_SCALE = 1.0 / 255.0
# ImageNet channel statistics (RGB), applied to pixels in [0, 1]: the
# normalisation of the authors' mini-ImageNet pipeline.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def has_transparency(image: Image.Image) -> bool:
    """Whether `image` (opened, not necessarily loaded) has an alpha channel
    or a transparent colour key."""
    return image.has_transparency_data


def read_image(path: str, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Reads one image file as the network sees it: uint8 [H, W, C].

    See the module docstring for the steps.

    Args:
      path: an image file.
      image_shape: (H, W, C) with C in {1, 3}.

    Raises:
      ValueError: naming the file, if it cannot be decoded or has more than
        8 bits per channel.
    """
    height, width, channels = image_shape
    if channels not in COLOR_MODES:
        raise ValueError(
            f"image_shape must end in 1 or 3 channels, got {image_shape}."
        )
    mode = COLOR_MODES[channels]
    try:
        with Image.open(path) as image:
            source_mode = image.mode
            if source_mode not in HIGH_BIT_DEPTH_MODES:
                image.draft(mode, (width, height))  # JPEG only; else no-op.
                if has_transparency(image):
                    rgba = image.convert("RGBA")
                    image = Image.alpha_composite(
                        Image.new("RGBA", rgba.size, BACKGROUND), rgba
                    )
                converted = image.convert(mode)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ...
        raise ValueError(
            f"Cannot decode image {str(path)!r}: {err}. Replace or remove "
            "the file."
        ) from err
    if source_mode in HIGH_BIT_DEPTH_MODES:
        raise ValueError(high_bit_depth_message([(path, source_mode)]))
    if converted.size != (width, height):
        converted = converted.resize((width, height), RESIZE_FILTER)
    return np.asarray(converted, np.uint8).reshape(height, width, channels)


def high_bit_depth_message(files: list[tuple[str, str]]) -> str:
    """The error for images of more than 8 bits per channel."""
    examples = ", ".join(f"{str(p)!r} ({m})" for p, m in files[:5])
    return (
        f"{len(files)} image(s) have more than 8 bits per channel, e.g. "
        f"{examples}; their scale to 0..255 is ambiguous. Convert them to "
        "8-bit images (e.g. 8-bit PNG)."
    )


def pixel_affine(
    normalization: str, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), float64 [channels]: float pixel = uint8 * s + o."""
    if normalization == "imagenet":
        if channels != len(IMAGENET_MEAN):
            raise ValueError(
                f"normalization='imagenet' needs RGB images, got {channels} "
                "channel(s). Use normalization='none'."
            )
        std = np.array(IMAGENET_STD)
        return PIXEL_SCALE / std, -np.array(IMAGENET_MEAN) / std
    if normalization == "none":
        return np.full(channels, PIXEL_SCALE), np.zeros(channels)
    raise ValueError(
        f"normalization must be one of {config_lib.NORMALIZATIONS}, got "
        f"{normalization!r}."
    )


def scale_pixels(images, normalization: str) -> tf.Tensor:
    """float32 [n, H, W, C] network input for uint8 images [n, H, W, C].

    The scale and offset are tiled over a whole image: TF's CPU kernels
    broadcast a [C] vector over [..., C] 3-4x slower than a [H*W*C] one
    over [n, H*W*C] (measured on 84x84x3).
    """
    n, height, width, channels = images.shape
    scale, offset = pixel_affine(normalization, channels)
    size = height * width * channels
    x = tf.reshape(images, [-1 if n is None else n, size])
    x = tf.cast(x, tf.float32) * tf.constant(
        np.tile(scale, height * width), tf.float32
    ) + tf.constant(np.tile(offset, height * width), tf.float32)
    return tf.reshape(x, [-1 if n is None else n, height, width, channels])


def describe(image_shape: tuple[int, int, int], normalization: str) -> dict:
    """The preprocessing as plain values, for an exported model's metadata.

    `check_described` accepts exactly what this returns for the same
    arguments.
    """
    scale, offset = pixel_affine(normalization, image_shape[2])
    return {
        "version": PREPROCESSING_VERSION,
        "image_shape": [int(d) for d in image_shape],
        "color_mode": COLOR_MODES[image_shape[2]],
        "resize_filter": RESIZE_FILTER_NAME,
        "transparency": "composited onto white",
        "normalization": normalization,
        "pixel_scale": [float(s) for s in scale],
        "pixel_offset": [float(o) for o in offset],
    }


def check_described(described: dict) -> tuple[tuple[int, int, int], str]:
    """(image_shape, normalization) of a `describe` dict from an export.

    Raises:
      ValueError: the dict was written by another preprocessing version.
    """
    version = described.get("version")
    if version != PREPROCESSING_VERSION:
        raise ValueError(
            f"The model was exported with preprocessing version {version!r}; "
            f"this mamlpp_tf applies version {PREPROCESSING_VERSION}. Export "
            "it again with this version's mamlpp-export."
        )
    shape = tuple(int(d) for d in described["image_shape"])
    normalization = described["normalization"]
    if describe(shape, normalization) != described:
        raise ValueError(
            f"The model's preprocessing {described} differs from what this "
            f"mamlpp_tf applies, {describe(shape, normalization)}. Export it "
            "again with this version's mamlpp-export."
        )
    return shape, normalization
