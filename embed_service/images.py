"""Image bytes -> the pixel tensor CLIP expects, on CPU threads beside the model.

Matches the model's own image processor (PIL backend): RGB, a resize of the short side
and a center crop (CLIP) or a resize to the exact size (SigLIP), scale to [0, 1],
normalize by mean and std. Two things it
adds: images are turned upright from their EXIF orientation, and large JPEGs are
decoded at a reduced scale (Pillow's draft mode) when that still leaves at least
the resize target, which cuts decode time several-fold at a negligible cost.

Every pixel mode Pillow decodes becomes the 8-bit RGB picture it shows:
- high bit depth (16-bit PNG/TIFF, 32-bit integer TIFF) is scaled from its own range
  (its declared bits per sample), not clipped at 255;
- floating-point images are read as 0.0 = black to 1.0 = white (the TIFF convention);
- transparency (RGBA, LA, palette or colour-key transparency) is composited on white
  (BACKGROUND), the way a viewer shows the picture on a page;
- CMYK is converted through its embedded ICC profile when it has one.

Memory: a decode holds at most about DECODE_BYTES_PER_PIXEL bytes per pixel of the image
(its decoded bands, at most 4 bytes a pixel in every mode Pillow decodes, and the copies
its conversion to RGB makes), and EMBED_MAX_IMAGE_PIXELS bounds the pixels. Every
sub-image a container holds (an ICO's frames) is checked against that limit before
anything is decoded, and high-bit-depth pixels are scaled a strip at a time.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageCms, ImageOps

from embed_service.errors import ImageEmpty, ImageTooLarge, ImageUnreadable, ModelLoadError

# Image.open(formats=...) only tries plugins already loaded, and Pillow loads just five
# by itself: load them all once, or ICO, QOI, AVIF... would be "not an image".
Image.init()
# Raster formats Pillow decodes itself (the JPEG plugin also opens MPO); no format that
# runs an outside program (EPS) or only identifies a file (HDF5, GRIB, BUFR, WMF), and not
# ICNS, whose sub-images Pillow decodes at whatever size they declare.
_WANTED = [
    "JPEG",
    "PNG",
    "WEBP",
    "GIF",
    "BMP",
    "DIB",
    "TIFF",
    "ICO",
    "PPM",
    "TGA",
    "QOI",
    "AVIF",
    "JPEG2000",
    "PCX",
    "SGI",
]
# AVIF and JPEG 2000 only where Pillow was built with them.
FORMATS = tuple(name for name in _WANTED if name in Image.OPEN)
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF, ICO, AVIF, JPEG 2000, PPM, TGA, QOI and more"
BACKGROUND = (255, 255, 255)
_HIGH_DEPTH = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}
# The most a decode holds per pixel, conversions included (the worst: a palette image with
# transparency: 1 decoded + 4 as RGBA + 4 of the white canvas + 1 of its alpha).
DECODE_BYTES_PER_PIXEL = 10
# Pixels scaled to 8 bits at once: a strip's int64 copy stays at 8 MiB.
_STRIP_PIXELS = 1 << 20
_ICO_MAGIC = b"\x00\x00\x01\x00"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SRGB = ImageCms.createProfile("sRGB")
# A draft size no JPEG reaches: decoded at full size.
FULL_SIZE = 1 << 30


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """What the model's processor does, read from its preprocessor config: a resize of the
    short side to `shortest_edge` then a center crop (CLIP), or a resize to exactly
    `resize_height` x `resize_width` with no crop (SigLIP: shortest_edge 0)."""

    shortest_edge: int
    crop_height: int
    crop_width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: Image.Resampling = Image.Resampling.BICUBIC
    resize_height: int = 0
    resize_width: int = 0
    # NaFlex (SigLIP 2): each image resized to at most max_patches patches of patch_size
    # at its own aspect ratio, then cut into them (see to_patches).
    patch_size: int = 0
    max_patches: int = 0

    @classmethod
    def from_processor(cls, processor: Any) -> Preprocessing:
        """Reads a transformers image processor's settings (PIL backend); ModelLoadError for
        one whose steps differ from these (another scale, no resize)."""
        name = type(processor).__name__
        scale = float(getattr(processor, "rescale_factor", 1 / 255))
        if not processor.do_resize or not processor.do_rescale or abs(scale * 255 - 1) > 1e-9:
            raise ModelLoadError(
                f"the checkpoint's image processor ({name}) does not resize and scale pixels "
                "by 1/255 as the supported families do"
            )
        mean, std = processor.image_mean, processor.image_std
        if not processor.do_normalize:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        normalized = cls(
            shortest_edge=0, crop_height=0, crop_width=0,
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
            resample=Image.Resampling(int(processor.resample)),
        )  # fmt: skip
        if getattr(processor, "max_num_patches", None):
            return replace(
                normalized,
                patch_size=int(processor.patch_size),
                max_patches=int(processor.max_num_patches),
            )
        size = processor.size
        shortest = int(size.shortest_edge or 0)
        if shortest:
            height = width = 0
        elif size.height and size.width:
            height, width = int(size.height), int(size.width)
        else:
            raise ModelLoadError(f"the image processor ({name}) has an unsupported size {size}")
        crop_height, crop_width = (height, width) if not shortest else (shortest, shortest)
        if getattr(processor, "do_center_crop", False):
            crop = processor.crop_size
            crop_height, crop_width = int(crop.height), int(crop.width)
        return replace(
            normalized,
            shortest_edge=shortest,
            crop_height=crop_height,
            crop_width=crop_width,
            resize_height=height,
            resize_width=width,
        )

    @property
    def min_side(self) -> int:
        """The shortest side a decode may reduce an image to and still resize as asked
        (NaFlex: the image's own size, which the patch budget's resize starts from)."""
        if self.max_patches:
            return FULL_SIZE
        return self.shortest_edge or max(self.resize_height, self.resize_width)

    @property
    def square_side(self) -> int:
        """The side of the square image the model sees; for NaFlex, that of a square
        image's patches at the full budget."""
        if self.max_patches:
            return self.patch_size * math.isqrt(self.max_patches)
        return self.crop_height

    def probe(self, count: int, seed: int = 0) -> npt.NDArray[np.float32]:
        """`count` inputs of random pixels, shaped as prepare() shapes a real image's."""
        rng = np.random.default_rng(seed)
        if not self.max_patches:
            shape = (count, 3, self.crop_height, self.crop_width)
            return rng.standard_normal(shape, dtype=np.float32)
        side = math.isqrt(self.max_patches)
        out = np.zeros((count, self.max_patches + 1, 3 * self.patch_size**2), np.float32)
        out[:, 0, :2] = side
        out[:, 1 : 1 + side * side] = rng.standard_normal(out[:, 1 : 1 + side * side].shape)
        return out


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Opens and checks an encoded image without decoding its pixels yet."""
    if not data:
        raise ImageEmpty("the image is empty (0 bytes)")
    if data.startswith(_ICO_MAGIC):
        # Pillow decodes an ICO's largest frame inside Image.open, at the size the frame
        # itself declares, whatever the directory says: check them all first.
        for width, height in _ico_frame_sizes(data):
            _check_pixels(width, height, max_pixels, what="an icon frame")
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
            f"the bytes are not an image in a supported format ({FORMAT_NAMES})"
        ) from exc
    _check_pixels(*image.size, max_pixels, what="the image")
    return image


def _check_pixels(width: int, height: int, max_pixels: int, *, what: str) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{what} is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} (EMBED_MAX_IMAGE_PIXELS)"
        )


def _ico_frame_sizes(data: bytes) -> list[tuple[int, int]]:
    """The size each frame of an ICO file declares in its own header (PNG or DIB)."""
    sizes = []
    count = int.from_bytes(data[4:6], "little")
    for entry in range(count):
        at = 6 + 16 * entry
        if at + 16 > len(data):
            break
        offset = int.from_bytes(data[at + 12 : at + 16], "little")
        head = data[offset : offset + 24]
        if head.startswith(_PNG_MAGIC) and len(head) >= 24:
            sizes.append((int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")))
        elif len(head) >= 12 and int.from_bytes(head[:4], "little") == 12:  # BITMAPCOREHEADER
            sizes.append((int.from_bytes(head[4:6], "little"), int.from_bytes(head[6:8], "little")))
        elif len(head) >= 12:  # a DIB's height counts its mask too: half is the picture
            width = abs(int.from_bytes(head[4:8], "little", signed=True))
            height = abs(int.from_bytes(head[8:12], "little", signed=True)) // 2
            sizes.append((width, height))
    return sizes


def decode(data: bytes, *, max_pixels: int, min_side: int) -> Image.Image:
    """Decodes to an upright RGB image whose short side is at least min_side where possible."""
    image = open_image(data, max_pixels=max_pixels)
    try:
        if image.format == "JPEG":
            # draft() only ever picks a scale that keeps both sides >= the request.
            image.draft("RGB", (min_side, min_side))
        image.load()
        # The source's tags say its bit depth; a transposed copy keeps none.
        depth = _depth(image)
        # In place: the turned copy replaces the pixels, never held beside them.
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image, depth=depth)
    except Exception as exc:
        raise ImageUnreadable(f"the image could not be decoded: {_describe(exc)}") from exc


def to_rgb(image: Image.Image, *, depth: tuple[float, bool] | None = None) -> Image.Image:
    """The 8-bit RGB picture an image shows, whatever its pixel mode (see the module doc).

    `depth` is what `_depth` read from the decoded file's tags, where `image` is a copy
    without them.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _HIGH_DEPTH or mode in ("I", "F"):
        return _scaled_to_8_bit(image, depth or _depth(image)).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in ("RGBa", "La"):  # premultiplied alpha
        image = image.convert("RGBA" if mode == "RGBa" else "LA")
    if image.mode in ("P", "L", "RGB", "1") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _depth(image: Image.Image) -> tuple[float, bool]:
    """(the value that is white, whether integers are signed) for a high-depth image."""
    if image.mode == "F":
        return 1.0, False
    if image.mode not in _HIGH_DEPTH and image.mode != "I":
        return 255.0, False
    bits = _HIGH_DEPTH.get(image.mode) or _declared_bits(image)
    signed = _tag(image, 339) == 2  # TIFF SampleFormat: 2 = signed integer
    return float(2 ** (bits - 1 if signed else bits) - 1), signed


def _scaled_to_8_bit(image: Image.Image, depth: tuple[float, bool]) -> Image.Image:
    """A high-bit-depth or float grayscale image as 8-bit "L", scaled from its own range.

    A strip of rows at a time, so what it holds beside the image is the 8-bit result and
    one strip, never a float64 copy of the whole (8 bytes a pixel, several times over)."""
    top = depth[0]
    width, height = image.size
    gray = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for first in range(0, height, rows):
        strip = np.asarray(image.crop((0, first, width, min(height, first + rows))))
        if image.mode == "F":
            scaled = np.rint(strip.astype(np.float64) * (255.0 / top))
        else:
            # round(v * 255 / top) in integers: top is odd, so there is never a tie, and
            # this is what float64's rint gave, exactly.
            wide = int(top)
            scaled = (strip.astype(np.int64) * 510 + wide) // (2 * wide)
        gray[first : first + rows] = np.clip(scaled, 0, 255)
    return Image.fromarray(gray)


def _declared_bits(image: Image.Image) -> int:
    """Bits per sample of an "I" image: TIFF says so; PNG and PGM only make "I" from 16."""
    bits = _tag(image, 258)  # TIFF BitsPerSample
    return int(bits) if bits else 16


def _tag(image: Image.Image, tag: int) -> Any:
    tags = getattr(image, "tag_v2", None)
    value = tags.get(tag) if tags is not None else None
    return value[0] if isinstance(value, tuple) else value


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: fall back to Pillow's plain conversion
    return image.convert("RGB")


def resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """Resize of the short side, then a center crop (as CLIPImageProcessor); or a resize to
    the exact size, squashing the picture, then a crop only if one is asked for (SigLIP)."""
    width, height = image.size
    if spec.shortest_edge:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = spec.shortest_edge, int(spec.shortest_edge * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
    else:
        size = (spec.resize_width, spec.resize_height)
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
    """RGB image -> normalized float32 array of shape (3, H, W).

    (x / 255 - mean) / std as one multiply-add straight from the uint8 pixels into the
    channel-first output: a tenth of the time of the four float passes it replaces
    (within 1e-6 of them), and decoding shares the cores with the model."""
    std = np.asarray(spec.std, dtype=np.float64)
    scale = (1 / (255 * std)).astype(np.float32)[:, None, None]
    bias = (-np.asarray(spec.mean, dtype=np.float64) / std).astype(np.float32)[:, None, None]
    channels = np.asarray(image).transpose(2, 0, 1)
    out = np.empty(channels.shape, dtype=np.float32)
    np.multiply(channels, scale, out=out)
    out += bias
    return out


def prepare(data: bytes, spec: Preprocessing, *, max_pixels: int) -> npt.NDArray[np.float32]:
    """Encoded bytes -> model input. Raises an ItemError subclass for a bad image."""
    image = decode(data, max_pixels=max_pixels, min_side=spec.min_side)
    if spec.max_patches:
        return to_patches(image, spec)
    return to_pixels(resize_and_crop(image, spec), spec)


def to_patches(image: Image.Image, spec: Preprocessing) -> npt.NDArray[np.float32]:
    """NaFlex: the image resized as Siglip2ImageProcessor resizes it (the largest size of
    whole patches, at its aspect ratio, within the budget), normalized and cut into patches.

    One array per image, so images of any aspect ratio batch together: row 0 holds the
    patch grid's height and width, rows 1.. the patches (channels last within a patch, as
    the processor orders them), zero past the image's own; the vision tower unpacks it."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import (
        get_image_size_for_max_num_patches,
    )

    p = spec.patch_size
    height, width = get_image_size_for_max_num_patches(
        image_height=image.height, image_width=image.width, patch_size=p,
        max_num_patches=spec.max_patches,
    )  # fmt: skip
    if (width, height) != image.size:
        image = image.resize((width, height), resample=spec.resample)
    pixels = to_pixels(image, spec)
    rows, columns = height // p, width // p
    patches = pixels.reshape(3, rows, p, columns, p).transpose(1, 3, 2, 4, 0)
    out = np.zeros((spec.max_patches + 1, 3 * p * p), np.float32)
    out[0, :2] = (rows, columns)
    out[1 : 1 + rows * columns] = patches.reshape(rows * columns, 3 * p * p)
    return out


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return text if text and len(text) < 200 else type(exc).__name__
