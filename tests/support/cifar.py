"""Small archives in the CIFAR-10/100 python format (pickled batches in a tar.gz)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from tests.support.imagegen import PALETTE

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]  # fmt: skip


def cifar10_archive(path: Path, *, per_batch: int = 4) -> Path:
    """cifar-10-python.tar.gz with 5 training batches of `per_batch` images each."""
    members: dict[str, dict[bytes, object]] = {
        "cifar-10-batches-py/batches.meta": {b"label_names": [c.encode() for c in CIFAR10_CLASSES]}
    }
    for n in range(1, 6):
        labels = [(n * per_batch + i) % 10 for i in range(per_batch)]
        members[f"cifar-10-batches-py/data_batch_{n}"] = {
            b"data": _pixels(labels), b"labels": labels,
        }  # fmt: skip
    members["cifar-10-batches-py/test_batch"] = {b"data": _pixels([0, 1]), b"labels": [0, 1]}
    return _write(path, members)


def cifar100_archive(path: Path, *, count: int = 6) -> Path:
    names = [f"class{i}".encode() for i in range(100)]
    labels = [i * 7 % 100 for i in range(count)]
    return _write(
        path,
        {
            "cifar-100-python/meta": {b"fine_label_names": names, b"coarse_label_names": []},
            "cifar-100-python/train": {b"data": _pixels(labels), b"fine_labels": labels},
            "cifar-100-python/test": {b"data": _pixels([1]), b"fine_labels": [1]},
        },
    )


def _pixels(labels: list[int]) -> np.ndarray:
    """Rows of 3072 bytes (R plane, G plane, B plane), one colour per label, with a mark."""
    colours = list(PALETTE.values())
    rows = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    for row, label in enumerate(labels):
        for channel in range(3):
            rows[row, channel] = colours[label % len(colours)][channel]
        rows[row, :, 4 : 4 + label % 20, 8:20] = 255
    return rows.reshape(len(labels), 3072)


def _write(path: Path, members: dict[str, dict[bytes, object]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            data = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path
