"""Generated test images: distinct colours and shapes, in any format."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 50, 170),
    "cyan": (40, 200, 210),
}


def picture(
    colour: str = "red", *, size: tuple[int, int] = (160, 120), shape: int = 0
) -> Image.Image:
    """A coloured picture with an off-centre shape, so rotations change it."""
    width, height = size
    image = Image.new("RGB", size, PALETTE[colour])
    draw = ImageDraw.Draw(image)
    box = (width // 8, height // 8, width // 2, height // 2 + shape * 5)
    if shape % 3 == 0:
        draw.rectangle(box, fill=(255, 255, 255))
    elif shape % 3 == 1:
        draw.ellipse(box, fill=(0, 0, 0))
    else:
        draw.polygon(
            [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])],
            fill=(255, 128, 0),
        )
    draw.line((0, height - 1, width - 1, height // 3), fill=(10, 10, 10), width=3)
    return image


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims width x height RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


CLASSES = ("red", "green", "blue")


def image_folder(root: Path, *, classes: tuple[str, ...] = CLASSES, per_class: int = 4) -> Path:
    """Class folders of JPEGs and PNGs (colour = class, shape varies), as labelled sets are."""
    for colour in classes:
        folder = root / colour
        folder.mkdir(parents=True, exist_ok=True)
        for shape in range(per_class):
            image = picture(colour, shape=shape, size=(64 + 16 * shape, 48 + 8 * shape))
            if shape % 2:
                (folder / f"{colour}-{shape}.png").write_bytes(encode(image, "PNG"))
            else:
                (folder / f"{colour}-{shape}.jpg").write_bytes(encode(image, "JPEG", quality=90))
    return root
