"""Image bytes -> the pixel tensor CLIP expects, on CPU threads beside the model.

Matches transformers' CLIPImageProcessor (PIL backend): RGB, bicubic resize of the
short side, center crop, scale to [0, 1], normalize by mean and std. Two things it
adds: images are turned upright from their EXIF orientation, and large JPEGs are
decoded at a reduced scale (Pillow's draft mode) when that still leaves at least
the resize target, which cuts decode time several-fold at a negligible cost.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from embed_service.errors import ImageEmpty, ImageTooLarge, ImageUnreadable

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """What the model's processor does, read from its preprocessor config."""

    shortest_edge: int
    crop_height: int
    crop_width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: Image.Resampling = Image.Resampling.BICUBIC

    @classmethod
    def from_processor(cls, processor: Any) -> Preprocessing:
        """Reads a transformers CLIPImageProcessor's settings."""
        size, crop = processor.size, processor.crop_size
        shortest = size.get("shortest_edge") or min(size["height"], size["width"])
        mean, std = processor.image_mean, processor.image_std
        return cls(
            shortest_edge=int(shortest),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
            resample=Image.Resampling(int(processor.resample)),
        )


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Opens and checks an encoded image without decoding its pixels yet."""
    if not data:
        raise ImageEmpty("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit below is the guard; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image is too large to decode safely ({exc})") from exc
    except Exception as exc:
        # Pillow's format plugins raise many types on malformed input; all mean the same.
        raise ImageUnreadable(
            "the bytes are not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)"
        ) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} (EMBED_MAX_IMAGE_PIXELS)"
        )
    return image


def decode(data: bytes, *, max_pixels: int, min_side: int) -> Image.Image:
    """Decodes to an upright RGB image whose short side is at least min_side where possible."""
    image = open_image(data, max_pixels=max_pixels)
    try:
        if image.format == "JPEG":
            # draft() only ever picks a scale that keeps both sides >= the request.
            image.draft("RGB", (min_side, min_side))
        image.load()
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGB") if upright.mode != "RGB" else upright
    except Exception as exc:
        raise ImageUnreadable(f"the image could not be decoded: {_describe(exc)}") from exc


def resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """Bicubic resize of the short side, then a center crop (as CLIPImageProcessor)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.shortest_edge, int(spec.shortest_edge * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    if size != image.size:
        image = image.resize(size, resample=spec.resample)
    width, height = image.size
    if spec.crop_width > width or spec.crop_height > height:
        # Only when the crop exceeds shortest_edge: pad centered, as the processor does.
        canvas = Image.new("RGB", (max(width, spec.crop_width), max(height, spec.crop_height)))
        canvas.paste(image, ((canvas.width - width + 1) // 2, (canvas.height - height + 1) // 2))
        image, (width, height) = canvas, canvas.size
    top = (height - spec.crop_height) // 2
    left = (width - spec.crop_width) // 2
    return image.crop((left, top, left + spec.crop_width, top + spec.crop_height))


def to_pixels(image: Image.Image, spec: Preprocessing) -> npt.NDArray[np.float32]:
    """RGB image -> normalized float32 array of shape (3, H, W)."""
    array = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((array - mean) / std).transpose(2, 0, 1))


def prepare(data: bytes, spec: Preprocessing, *, max_pixels: int) -> npt.NDArray[np.float32]:
    """Encoded bytes -> model input. Raises an ItemError subclass for a bad image."""
    image = decode(data, max_pixels=max_pixels, min_side=spec.shortest_edge)
    return to_pixels(resize_and_crop(image, spec), spec)


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return text if text and len(text) < 200 else type(exc).__name__
