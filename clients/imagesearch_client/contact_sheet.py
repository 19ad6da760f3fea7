"""A contact sheet: the query image and its matches, each captioned with its score."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

TILE = 160
CAPTION = 34
GAP = 10  # white between tiles, so captions and pictures never run together
COLUMNS = 6


@dataclass(frozen=True, slots=True)
class SheetTile:
    image: bytes | None  # None: drawn as a grey placeholder (e.g. a record with no file)
    lines: tuple[str, ...]


def sheet_size(tiles: int) -> tuple[int, int]:
    columns = min(COLUMNS, max(tiles, 1))
    rows = -(-tiles // columns)
    return GAP + columns * (TILE + GAP), GAP + rows * (TILE + CAPTION + GAP)


def tile_origin(n: int, tiles: int) -> tuple[int, int]:
    """The top-left corner of tile `n` of `tiles` on the sheet."""
    columns = min(COLUMNS, max(tiles, 1))
    return GAP + (n % columns) * (TILE + GAP), GAP + (n // columns) * (TILE + CAPTION + GAP)


def contact_sheet(tiles: Sequence[SheetTile], out: Path) -> Path:
    width, height = sheet_size(len(tiles))
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for n, tile in enumerate(tiles):
        x, y = tile_origin(n, len(tiles))
        sheet.paste(_thumbnail(tile.image), (x, y))
        for i, line in enumerate(tile.lines[:2]):
            draw.text((x + 4, y + TILE + 3 + 15 * i), line[:26], fill="black", font=font)
    sheet.save(out)
    return out


def _thumbnail(data: bytes | None) -> Image.Image:
    if data is not None:
        try:
            with Image.open(io.BytesIO(data)) as image:
                return ImageOps.pad(
                    ImageOps.exif_transpose(image).convert("RGB"), (TILE, TILE), color="white"
                )
        except (OSError, Image.DecompressionBombError):
            pass  # not an image, or one too large to decode safely: a placeholder
    return Image.new("RGB", (TILE, TILE), (200, 200, 200))
