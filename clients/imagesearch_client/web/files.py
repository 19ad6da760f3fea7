"""Images the gallery shows: thumbnails of files under --root and of CIFAR records.

Only files under the root are ever read: a path is resolved (symlinks followed) and
must still lie inside the resolved root, so `..`, absolute paths and symlinks that
point out are refused alike.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image, ImageOps

from imagesearch_client.sources import CIFAR_ID, every_cifar_image, inside

THUMB_PX = 160
THUMB_QUALITY = 80
CACHE_ENTRIES = 4096


def thumbnail(data: bytes | Path) -> bytes:
    """A JPEG of at most THUMB_PX on its long side, upright as its EXIF says."""
    with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as image:
        image.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))  # JPEG: decode at 1/2..1/8 scale
        upright = ImageOps.exif_transpose(image)
        rgb = upright.convert("RGBA")
        flat = Image.new("RGB", rgb.size, "white")
        flat.paste(rgb, mask=rgb.getchannel("A"))
        if max(flat.size) < THUMB_PX:  # CIFAR's 32 px: scale up, crisp
            factor = THUMB_PX // max(flat.size)
            flat = flat.resize(
                (flat.width * factor, flat.height * factor), Image.Resampling.NEAREST
            )
        flat.thumbnail((THUMB_PX, THUMB_PX))
        out = io.BytesIO()
        flat.save(out, format="JPEG", quality=THUMB_QUALITY, optimize=True)
        return out.getvalue()


class Thumbnails:
    """Thumbnails of files under the root, made once per file version (LRU)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, relative: str) -> bytes | None:
        """None when there is no such image under the root, or it cannot be decoded."""
        path = inside(self.root, relative)
        if path is None:
            return None
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            made = thumbnail(path)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        with self._lock:
            self._cache[key] = made
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return made


class CifarImages:
    """Thumbnails of CIFAR records (ids like CIFAR10.123), read from the archives given.

    The archives are read once, on the first request, into thumbnails in memory
    (about 3 KB per image).
    """

    def __init__(self, archives: tuple[Path, ...]) -> None:
        self._archives = archives
        self._thumbs: dict[str, bytes] | None = None
        self._lock = threading.Lock()

    def get(self, record_id: str) -> bytes | None:
        if not self._archives or not CIFAR_ID.match(record_id):
            return None
        with self._lock:
            if self._thumbs is None:
                self._thumbs = {
                    source.id: thumbnail(source.image)
                    for source in every_cifar_image(self._archives)
                }
        return self._thumbs.get(record_id)
