"""Both towers exported to ONNX once per model and settings, kept in EMBED_CACHE_DIR.

An entry is a folder named by the weights' fingerprint and a digest of everything
that shapes the graph (precision, opset, torch and onnxruntime versions, the int8
scheme). It is written into a temporary folder and renamed into place with its
manifest last, under a lock, so replicas sharing a cache export once and a crash
leaves no half entry. Loading checks every file's size and SHA-256 against the
manifest: a truncated, corrupt or stale entry is exported again, never trusted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embed_service.errors import ModelLoadError
from embed_service.runtimes.towers import TextTower, VisionTower

log = logging.getLogger(__name__)

# 2: the text tower of a family that reads no mask (SigLIP) takes the ids alone.
FORMAT = 2
OPSET = 18
FILES = ("vision.onnx", "text.onnx")
MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imagesearch"


@dataclass(frozen=True, slots=True)
class Exported:
    vision: Path
    text: Path
    reused: bool


def export_key(*, fingerprint: str, precision: str, reduce_range: bool) -> dict[str, Any]:
    import onnxruntime

    return {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "precision": precision,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "int8_reduce_range": reduce_range if precision == "int8" else None,
    }


def digest(key: dict[str, Any], length: int = 16) -> str:
    """A short, stable name for a dict of settings (the same dict, the same name)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:length]


def entry_dir(cache_dir: Path, key: dict[str, Any]) -> Path:
    return cache_dir / "onnx" / f"{key['fingerprint'][:16]}-{key['precision']}-{digest(key)}"


def exported(
    clip: Any,
    *,
    cache_dir: Path,
    fingerprint: str,
    precision: str,
    device: torch.device,
    reduce_range: bool = False,
    text_mask: bool = True,
) -> Exported:
    """The cached ONNX towers of `clip` in `precision`, exporting them if needed."""
    key = export_key(fingerprint=fingerprint, precision=precision, reduce_range=reduce_range)
    entry = entry_dir(cache_dir, key)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot create the ONNX cache at {entry.parent} ({exc}); set EMBED_CACHE_DIR "
            "to a writable folder"
        ) from exc
    with locked(entry.with_name(entry.name + ".lock")):
        problem = verify(entry, key)
        if problem is None:
            return Exported(entry / FILES[0], entry / FILES[1], reused=True)
        if entry.exists():
            log.warning("ONNX cache entry %s is unusable (%s); exporting again", entry, problem)
            shutil.rmtree(entry, ignore_errors=True)
        started = time.perf_counter()
        try:
            _export_into(entry, clip, key=key, device=device, reduce_range=reduce_range,
                         text_mask=text_mask)  # fmt: skip
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(
                f"could not export the model to ONNX in {entry.parent} ({exc}); free space "
                "there, point EMBED_CACHE_DIR elsewhere, or set EMBED_BACKEND=torch"
            ) from exc
        log.info("exported ONNX towers (%s) to %s in %.1f s", precision, entry,
                 time.perf_counter() - started)  # fmt: skip
        return Exported(entry / FILES[0], entry / FILES[1], reused=False)


def verify(entry: Path, key: dict[str, Any]) -> str | None:
    """None when the entry is complete and intact; else what is wrong with it."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return "made with other settings"
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(FILES):
        return "manifest lists other files"
    for name, facts in files.items():
        path = entry / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if not isinstance(facts, dict) or size != facts.get("bytes"):
            return f"{name} has {size} bytes, the manifest says {facts.get('bytes')}"
        if _sha256(path) != facts.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def _export_into(entry: Path, clip: Any, *, key: dict[str, Any], device: torch.device,
                 reduce_range: bool, text_mask: bool) -> None:  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        precision = key["precision"]
        if precision == "fp16":
            clip = _half_copy(clip, device)
        raw = work / "raw" if precision == "int8" else work
        raw.mkdir(exist_ok=True)
        _export_towers(clip, raw, device=device if precision == "fp16" else torch.device("cpu"),
                       text_mask=text_mask)  # fmt: skip
        if precision == "int8":
            _quantize(raw, work, reduce_range=reduce_range)
            shutil.rmtree(raw)
        files = {
            name: {"bytes": (work / name).stat().st_size, "sha256": _sha256(work / name)}
            for name in FILES
        }
        (work / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=1))
        os.replace(work, entry)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _export_towers(clip: Any, folder: Path, *, device: torch.device, text_mask: bool) -> None:
    size = int(clip.config.vision_config.image_size)
    dtype = next(clip.parameters()).dtype
    pixels = torch.zeros((2, 3, size, size), dtype=dtype, device=device)
    ids = torch.ones((2, 5), dtype=torch.int64, device=device)
    mask = torch.ones((2, 5), dtype=torch.int64, device=device)
    batch = {0: "batch"}
    tokens = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The tracer warns about shape checks it freezes; CLIP's shapes are fixed by its
        # config (image size) or covered by the dynamic axes below (batch, tokens).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            VisionTower(clip).eval(),
            (pixels,),
            str(folder / FILES[0]),
            input_names=["pixel_values"],
            output_names=["embeds"],
            dynamic_axes={"pixel_values": batch, "embeds": batch},
            opset_version=OPSET,
            dynamo=False,
        )
        names = ["input_ids", "attention_mask"] if text_mask else ["input_ids"]
        torch.onnx.export(
            TextTower(clip, mask=text_mask).eval(),
            (ids, mask) if text_mask else (ids,),
            str(folder / FILES[1]),
            input_names=names,
            output_names=["embeds"],
            dynamic_axes={**{name: tokens for name in names}, "embeds": batch},
            opset_version=OPSET,
            dynamo=False,
        )


def _quantize(source: Path, target: Path, *, reduce_range: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # It logs "consider pre-processing" advice straight on the root logger.
    quiet = _DropFrom("onnxruntime")
    logging.root.addFilter(quiet)
    try:
        for name in FILES:
            quantize_dynamic(
                source / name,
                target / name,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=reduce_range,
            )
    finally:
        logging.root.removeFilter(quiet)


class _DropFrom(logging.Filter):
    def __init__(self, package: str) -> None:
        super().__init__()
        self._part = f"{os.sep}{package}{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return self._part not in record.pathname


def _half_copy(clip: Any, device: torch.device) -> Any:
    import copy

    return copy.deepcopy(clip).to(device).half()


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on `path` (created if needed), across processes."""
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
