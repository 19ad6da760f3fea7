"""Where images to index come from: a folder tree, or the CIFAR python-format archives."""

from __future__ import annotations

import io
import pickle
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from imagesearch.ids import content_id
from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# The ids `cifar_images` gives: CIFAR10.123, CIFAR100.test.45.
CIFAR_ID = re.compile(r"^CIFAR(10|100)\.(test\.)?\d+$")
# A file a record names is read whole; anything larger is no photo (or is /dev/zero).
MAX_IMAGE_FILE_BYTES = 64 * 2**20


def inside(
    root: Path, relative: str, *, max_bytes: int | None = MAX_IMAGE_FILE_BYTES
) -> Path | None:
    """The image file `relative` names under `root`, or None if it is not a regular image
    file of at most `max_bytes` inside it.

    Resolved with symlinks followed, then required to lie inside the resolved root, so
    `..`, absolute paths and symlinks that point out are refused alike: a record's
    metadata is whatever somebody stored, never a path to trust."""
    if not relative or "\x00" in relative:
        return None
    base = root.resolve()
    try:
        candidate = (base / relative).resolve()
        if not candidate.is_relative_to(base) or not candidate.is_file():
            return None
        if max_bytes is not None and candidate.stat().st_size > max_bytes:
            return None
    except (OSError, RuntimeError):  # a symlink loop, a file gone
        return None
    if candidate.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return candidate


@dataclass(frozen=True, slots=True)
class SourceImage:
    """One image to index: its id, bytes, metadata, and a name to report it by."""

    id: str
    image: bytes
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)


def image_files(root: Path) -> list[Path]:
    """Image files under root, recursively, in a stable order; hidden entries skipped, and
    symlinks that lead out of root too (the gallery would never show those files)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and inside(root, p.relative_to(root).as_posix(), max_bytes=None) is not None
    )


def folder_images(root: Path, files: list[Path], *, label_from_dir: bool) -> Iterator[SourceImage]:
    """Reads files one at a time: memory holds only what the caller keeps."""
    for path in files:
        relative = path.relative_to(root).as_posix()
        data = path.read_bytes()
        metadata: dict[str, Any] = {"path": relative}
        if label_from_dir and path.parent != root:
            metadata["label"] = path.parent.name
        yield SourceImage(content_id(data), data, relative, metadata)


# --- CIFAR -------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; load only numpy arrays and builtins from them, not code."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR archive")
        return super().find_class(module, name)


@dataclass(frozen=True, slots=True)
class CifarLayout:
    prefix: str  # "CIFAR10" or "CIFAR100"
    meta: str
    names_key: bytes
    labels_key: bytes
    train: tuple[str, ...]
    test: tuple[str, ...]


CIFAR10 = CifarLayout(
    "CIFAR10",
    "cifar-10-batches-py/batches.meta",
    b"label_names",
    b"labels",
    tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    ("cifar-10-batches-py/test_batch",),
)
CIFAR100 = CifarLayout(
    "CIFAR100",
    "cifar-100-python/meta",
    b"fine_label_names",
    b"fine_labels",
    ("cifar-100-python/train",),
    ("cifar-100-python/test",),
)


def cifar_count(path: Path, *, split: str = "train") -> int:
    with tarfile.open(path, "r:*") as archive:
        layout = _layout(archive)
        return sum(
            len(_load(archive, member)[layout.labels_key]) for member in _members(layout, split)
        )


def cifar_images(path: Path, *, split: str = "train") -> Iterator[SourceImage]:
    """Images of a CIFAR-10/100 python archive as PNGs, ids like CIFAR10.123, label = class."""
    with tarfile.open(path, "r:*") as archive:
        layout = _layout(archive)
        names = [n.decode() for n in _load(archive, layout.meta)[layout.names_key]]
        index = 0
        for member in _members(layout, split):
            batch = _load(archive, member)
            pixels = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            for row, label in zip(pixels, batch[layout.labels_key], strict=True):
                buffer = io.BytesIO()
                Image.fromarray(row.transpose(1, 2, 0)).save(buffer, format="PNG")
                record_id = (
                    f"{layout.prefix}.{index}"
                    if split == "train"
                    else (f"{layout.prefix}.{split}.{index}")
                )
                metadata = {"label": names[label], "dataset": layout.prefix, "split": split}
                yield SourceImage(record_id, buffer.getvalue(), record_id, metadata)
                index += 1


def every_cifar_image(archives: Sequence[Path]) -> Iterator[SourceImage]:
    """Every image of the archives, train then test split of each; an archive without a
    split (or unreadable) gives what it has."""
    for archive in archives:
        for split in ("train", "test"):
            try:
                yield from cifar_images(archive, split=split)
            except (OSError, ValueError, KeyError):
                continue  # an archive without this split


def _members(layout: CifarLayout, split: str) -> tuple[str, ...]:
    if split not in ("train", "test"):
        raise ValueError(f"split is {split!r}; use train or test")
    return layout.train if split == "train" else layout.test


def _layout(archive: tarfile.TarFile) -> CifarLayout:
    names = set(archive.getnames())
    for layout in (CIFAR10, CIFAR100):
        if layout.meta in names:
            return layout
    raise ValueError(
        "not a CIFAR python-format archive: expected cifar-10-python.tar.gz or "
        "cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"
    )


def _load(archive: tarfile.TarFile, member: str) -> dict[bytes, Any]:
    handle = archive.extractfile(member)
    if handle is None:
        raise ValueError(f"{member} is missing from the archive")
    with handle:
        loaded: dict[bytes, Any] = _CifarUnpickler(handle, encoding="bytes").load()
    return loaded
