"""Every format and pixel mode embeds as the 8-bit RGB picture it shows.

Each case encodes one picture another way (more bits, another colour model, with
transparency, another container) and is compared with the plain 8-bit RGB encoding of
the pixels a viewer would show: cosine >= 0.999.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from PIL import Image

from embed_service.images import BACKGROUND
from tests.support.imagegen import encode, picture

Stub = pb_grpc.EmbedServiceStub
SAME_PICTURE = 0.999


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale for 2-D arrays, RGB for 3 channels); Pillow writes neither."""
    height, width = array.shape[:2]
    colour_type = 0 if array.ndim == 2 else 2
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def gray() -> np.ndarray:
    return np.asarray(picture("cyan", size=(96, 80), shape=1).convert("L"), dtype=np.uint8)


def rgb() -> np.ndarray:
    return np.asarray(picture("purple", size=(96, 80), shape=2), dtype=np.uint8)


def tiff(array: np.ndarray, mode: str | None = None) -> bytes:
    return encode(Image.fromarray(array, mode) if mode else Image.fromarray(array), "TIFF")


def on_background(rgba: np.ndarray) -> np.ndarray:
    """What a viewer shows of an RGBA image: composited on BACKGROUND."""
    alpha = rgba[..., 3:4].astype(np.float64) / 255
    shown = rgba[..., :3] * alpha + np.asarray(BACKGROUND) * (1 - alpha)
    return np.rint(shown).astype(np.uint8)


def with_transparency() -> np.ndarray:
    rgba = np.dstack([rgb(), np.full(rgb().shape[:2], 255, np.uint8)])
    rgba[:40, :50, 3] = 0  # fully transparent; the hidden colour must not show
    rgba[:40, :50, :3] = (255, 0, 255)
    rgba[50:, 60:, 3] = 128
    return rgba


def palette_with_transparent_index() -> tuple[bytes, np.ndarray]:
    palette = [v for i in range(16) for v in (i * 16, 255 - i * 16, (i * 40) % 256)]
    indices = (np.arange(96 * 80).reshape(80, 96) // 7 % 16).astype(np.uint8)
    indices[:30, :30] = 15
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)
    data = encode(image, "PNG", transparency=15)
    # What the saved file holds, as a viewer shows it.
    rgba = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    assert (rgba[..., 3] == 0).any(), "the test image lost its transparent pixels"
    return data, on_background(rgba)


CASES: dict[str, Callable[[], tuple[bytes, np.ndarray]]] = {
    "16-bit grayscale PNG": lambda: (png16(gray().astype(np.uint16) * 257), gray()),
    "16-bit RGB PNG": lambda: (png16(rgb().astype(np.uint16) * 257), rgb()),
    "16-bit grayscale TIFF": lambda: (tiff(gray().astype(np.uint16) * 257), gray()),
    "32-bit integer TIFF": lambda: (
        tiff(np.rint(gray() * ((2**31 - 1) / 255)).astype(np.int32), "I"),
        gray(),
    ),
    "32-bit float TIFF": lambda: (tiff((gray() / 255).astype(np.float32), "F"), gray()),
    "ICO": lambda: (
        encode(Image.fromarray(rgb()).resize((64, 64)), "ICO", sizes=[(64, 64)]),
        np.asarray(Image.fromarray(rgb()).resize((64, 64))),
    ),
    "RGBA PNG with transparency": lambda: (
        encode(Image.fromarray(with_transparency(), "RGBA"), "PNG"),
        on_background(with_transparency()),
    ),
    "LA PNG with transparency": lambda: (
        encode(Image.fromarray(with_transparency(), "RGBA").convert("LA"), "PNG"),
        on_background(
            np.asarray(Image.fromarray(with_transparency()).convert("LA").convert("RGBA"))
        ),
    ),
    "palette PNG with a transparent index": palette_with_transparent_index,
    "CMYK TIFF": lambda: (encode(Image.fromarray(rgb()).convert("CMYK"), "TIFF"), rgb()),
    "CMYK JPEG": lambda: (
        encode(Image.fromarray(rgb()).convert("CMYK"), "JPEG", quality=100),
        np.asarray(Image.open(io.BytesIO(encode(Image.fromarray(rgb()), "JPEG", quality=100)))),
    ),
    "1-bit PNG": lambda: (
        encode(Image.fromarray(gray()).convert("1"), "PNG"),
        np.asarray(Image.fromarray(gray()).convert("1").convert("L")),
    ),
    "QOI": lambda: (encode(Image.fromarray(rgb()), "QOI"), rgb()),
    "TGA": lambda: (encode(Image.fromarray(rgb()), "TGA"), rgb()),
    "PPM": lambda: (encode(Image.fromarray(rgb()), "PPM"), rgb()),
    "lossless JPEG 2000": lambda: (
        encode(Image.fromarray(rgb()), "JPEG2000", irreversible=False),
        rgb(),
    ),
    "lossless AVIF": lambda: (encode(Image.fromarray(rgb()), "AVIF", quality=100), rgb()),
}


def as_rgb_png(pixels: np.ndarray) -> bytes:
    image = Image.fromarray(pixels)
    return encode(image.convert("RGB"), "PNG")


@pytest.mark.parametrize("case", list(CASES))
async def test_each_mode_and_format_embeds_as_the_picture_it_shows(
    embed_stub: Stub, case: str
) -> None:
    data, shown = CASES[case]()
    reply = await embed_stub.EmbedImages(pb.EmbedImagesRequest(images=[data, as_rgb_png(shown)]))
    ours, reference = reply.embeddings
    assert not ours.HasField("error"), ours.error.message
    cosine = float(np.dot(ours.values, reference.values))
    assert cosine >= SAME_PICTURE, f"{case}: cosine {cosine:.4f} to its own pixels"


async def test_a_16_bit_image_is_not_clipped_to_white(embed_stub: Stub) -> None:
    # The failure this guards against: 16-bit values read as 8-bit saturate to white.
    white = np.full(gray().shape, 255, np.uint8)
    reply = await embed_stub.EmbedImages(
        pb.EmbedImagesRequest(images=[png16(gray().astype(np.uint16) * 257), as_rgb_png(white)])
    )
    assert float(np.dot(reply.embeddings[0].values, reply.embeddings[1].values)) < 0.999
