"""Decoding stays within its documented memory: DECODE_BYTES_PER_PIXEL per pixel.

Each worst case is a small file that decodes to the pixel limit (or claims to, inside a
container) in the mode that costs most; each is decoded in a process of its own, whose
peak RSS (VmHWM) is read before and after.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embed_service.images import DECODE_BYTES_PER_PIXEL

SIDE = 4000
LIMIT = SIDE * SIDE
# The interpreter's own growth while it works (allocator arenas, the model input).
SLACK_MB = 48

PROBE = """
import json, re, sys
from pathlib import Path
from embed_service.errors import ImageTooLarge
from embed_service.images import Preprocessing, prepare

def peak():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) // 1024

spec = Preprocessing(224, 224, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
data = Path(sys.argv[1]).read_bytes()
prepare(b"P6 1 1 255 abc", spec, max_pixels=1)  # every plugin and buffer loaded first
before = peak()
try:
    shape = list(prepare(data, spec, max_pixels=int(sys.argv[2])).shape)
except ImageTooLarge as exc:
    shape = str(exc)
print(json.dumps({"before": before, "after": peak(), "result": shape}))
"""


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def ramp() -> np.ndarray:
    """Dark at the top, light at the bottom: each row one value, so any codec packs it."""
    return np.tile(np.linspace(0, 1, SIDE, dtype=np.float64)[:, None], (1, SIDE))


def png16() -> bytes:
    return encoded(Image.fromarray((ramp() * 65535).astype(np.uint16)), "PNG")


def float_tiff() -> bytes:
    return encoded(
        Image.fromarray(ramp().astype(np.float32), "F"), "TIFF", compression="tiff_deflate"
    )


def int32_tiff() -> bytes:
    image = Image.fromarray((ramp() * (2**31 - 1)).astype(np.int32), "I")
    return encoded(image, "TIFF", compression="tiff_deflate")


def palette_with_transparency() -> bytes:
    image = Image.fromarray((ramp() * 255).astype(np.uint8)).convert("P")
    return encoded(image, "PNG", transparency=0)


def turned_rgba() -> bytes:
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[..., 3] = (ramp() * 255).astype(np.uint8)
    image = Image.fromarray(rgba, "RGBA")
    exif = image.getexif()
    exif[0x0112] = 6  # rotated: the decode turns it upright
    return encoded(image, "PNG", exif=exif)


def ico_hiding_a_huge_png() -> bytes:
    """An ICO whose directory says 16x16, holding a 13000 x 13000 PNG."""
    frame = encoded(Image.new("1", (13000, 13000)), "PNG")
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(frame), 6 + 16)
    return header + entry + frame


CASES: dict[str, Callable[[], bytes]] = {
    "16-bit PNG": png16,
    "float TIFF": float_tiff,
    "32-bit integer TIFF": int32_tiff,
    "palette PNG with transparency": palette_with_transparency,
    "RGBA PNG turned by EXIF": turned_rgba,
    "ICO hiding a 13000 x 13000 PNG": ico_hiding_a_huge_png,
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_a_worst_case_file_decodes_within_the_documented_memory(case: str, tmp_path: Path) -> None:
    data = CASES[case]()
    assert len(data) < 2 * 2**20, "a worst case is a small file"
    path = tmp_path / "image"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), str(LIMIT)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    measured = json.loads(done.stdout)
    grew = measured["after"] - measured["before"]
    if case.startswith("ICO"):
        assert "an icon frame is 13000x13000" in measured["result"]
        assert grew <= SLACK_MB, measured
    else:
        assert measured["result"] == [3, 224, 224]
        assert grew <= DECODE_BYTES_PER_PIXEL * LIMIT / 2**20 + SLACK_MB, measured
