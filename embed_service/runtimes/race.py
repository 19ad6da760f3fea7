"""Which runtime and precision embed: EMBED_BACKEND x EMBED_PRECISION, resolved here.

A named backend and precision run as named (`auto` precision keeps its old meaning
per runtime). `EMBED_BACKEND=auto` races the options this machine has on a fixed
probe batch and keeps the fastest whose vectors stay within cosine MIN_COSINE of
torch fp32, since which one wins depends on the CPU (ONNX Runtime's fp32 kernels,
torch's native bf16, ...). The verdict is kept in the cache folder, keyed by the
weights, the machine and the versions, so later starts (and sibling replicas, which
then agree) skip the race. int8 is never picked by `auto`: how much it moves real
CLIP vectors cannot be checked on random weights, so it stays opt-in.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embed_service.config import Backend
from embed_service.errors import ModelLoadError
from embed_service.runtimes.base import Ids, Runtime, RuntimeName
from embed_service.runtimes.onnx_export import digest, locked

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
# int8 is asked for by name, accepting that it moves vectors; this only rejects a broken one.
MIN_COSINE_INT8 = 0.99
PROBE_TEXTS = ("a photo of a dog", "a red car parked on a street at night", "x")
RACE_SECONDS = 1.5  # per option, after one warm-up pass
CHOICE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Option:
    runtime: RuntimeName
    precision: str

    def __str__(self) -> str:
        return f"{self.runtime} {self.precision}"


@dataclass(frozen=True, slots=True)
class Timing:
    option: str
    images_per_s: float
    cosine: float


def options(
    backend: Backend,
    precision: str,
    *,
    device: torch.device,
    native_bf16: bool,
    onnx_providers: list[str],
) -> list[Option]:
    """What may run for these settings, fp32 first. Raises ModelLoadError when nothing can."""
    cuda = device.type == "cuda"
    torch_ok = _torch_precisions(cuda)
    onnx_ok = _onnx_precisions(cuda, onnx_providers)
    if backend == "torch":
        return [Option("torch", _named(precision, torch_ok, cuda, native_bf16, "torch"))]
    if backend == "onnx":
        return [Option("onnx", _named(precision, onnx_ok, cuda, native_bf16, "onnx"))]
    if precision == "auto":
        fast = ["fp16"] if cuda else (["bf16"] if native_bf16 else [])
        found = [Option("torch", p) for p in ["fp32", *fast]]
        found += [Option("onnx", p) for p in ["fp32", *fast] if p in onnx_ok]
        return found
    found = [Option("torch", precision)] if precision in torch_ok else []
    found += [Option("onnx", precision)] if precision in onnx_ok else []
    if not found:
        _named(precision, torch_ok, cuda, native_bf16, "torch")  # raises with the reason
    return found


def _torch_precisions(cuda: bool) -> set[str]:
    return {"fp32", "fp16", "bf16"} if cuda else {"fp32", "bf16", "int8"}


def _onnx_precisions(cuda: bool, providers: list[str]) -> set[str]:
    if not cuda:
        return {"fp32", "int8"}
    return {"fp32", "fp16"} if "CUDAExecutionProvider" in providers else set()


def _named(precision: str, ok: set[str], cuda: bool, native_bf16: bool, runtime: str) -> str:
    chosen = precision
    if precision == "auto":
        chosen = "fp16" if cuda else "bf16" if native_bf16 and runtime == "torch" else "fp32"
    if chosen in ok:
        return chosen
    if runtime == "onnx" and cuda and not ok:
        raise ModelLoadError(
            "EMBED_BACKEND=onnx on CUDA needs onnxruntime-gpu (CUDAExecutionProvider); "
            "install it, or use EMBED_BACKEND=torch"
        )
    if chosen == "int8":
        raise ModelLoadError("EMBED_PRECISION=int8 runs on CPU only; use fp16 on CUDA")
    if chosen == "fp16":
        raise ModelLoadError("EMBED_PRECISION=fp16 needs CUDA; use bf16 or fp32 on CPU")
    raise ModelLoadError(
        f"EMBED_PRECISION={chosen} is not offered by EMBED_BACKEND={runtime}; "
        f"it offers {', '.join(sorted(ok))}"
    )


def choose(
    candidates: list[Option],
    build: Callable[[Option], Runtime],
    *,
    pixels: np.ndarray,
    tokenize: Callable[[list[str]], tuple[Ids, Ids]],
    verdicts: Path | None,
    key: dict[str, Any],
) -> tuple[Runtime, list[Timing]]:
    """The runtime to serve with: the only candidate, the cached verdict, or the race's winner."""
    if len(candidates) == 1:
        return build(candidates[0]), []
    if verdicts is None:
        return _race(candidates, build, pixels, tokenize)
    try:
        verdicts.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot create {verdicts} for the runtime verdicts ({exc}); set EMBED_CACHE_DIR "
            "to a writable folder"
        ) from exc
    path = verdicts / f"{digest(key, 24)}.json"
    with locked(path.with_suffix(".lock")):
        cached = _read_verdict(path, key, candidates)
        if cached is not None:
            option, timings = cached
            log.info("runtime: %s (measured on an earlier start, %s)", option, path)
            return build(option), timings
        runtime, timings = _race(candidates, build, pixels, tokenize)
        if len(timings) < len(candidates):
            # A runtime was left out (a failed export): race again on the next start
            # rather than keep a verdict that never saw it.
            return runtime, timings
        verdict = {
            "format": CHOICE_FORMAT,
            "key": key,
            "choice": {"runtime": runtime.name, "precision": runtime.precision},
            "timings": [asdict(t) for t in timings],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(verdict, indent=1))
        tmp.replace(path)
        return runtime, timings


def _race(
    candidates: list[Option],
    build: Callable[[Option], Runtime],
    pixels: np.ndarray,
    tokenize: Callable[[list[str]], tuple[Ids, Ids]],
) -> tuple[Runtime, list[Timing]]:
    ids, mask = tokenize(list(PROBE_TEXTS))
    reference: tuple[np.ndarray, np.ndarray] | None = None
    best: tuple[float, Runtime] | None = None
    timings = []
    for option in candidates:
        try:
            runtime = build(option)
        except ModelLoadError as exc:
            # One runtime that cannot be prepared here (its export failed) leaves the rest.
            log.warning("runtime race: %s left out: %s", option, exc)
            continue
        images = runtime.embed_pixels(pixels)  # also the warm-up
        texts = runtime.embed_tokens(ids, mask)
        if reference is None:
            if str(option) != "torch fp32":
                reference = _reference(build, pixels, ids, mask)
            else:
                reference = (images, texts)
        cosine = float(
            min((images * reference[0]).sum(1).min(), (texts * reference[1]).sum(1).min())
        )
        runs, started = 0, time.perf_counter()
        while runs < 3 and (runs == 0 or time.perf_counter() - started < RACE_SECONDS):
            runtime.embed_pixels(pixels)
            runs += 1
        rate = runs * len(pixels) / (time.perf_counter() - started)
        timings.append(Timing(str(option), round(rate, 2), round(cosine, 6)))
        floor = MIN_COSINE_INT8 if option.precision == "int8" else MIN_COSINE
        if cosine >= floor and (best is None or rate > best[0]):
            best = (rate, runtime)
    log.info("runtime race: %s", ", ".join(
        f"{t.option} {t.images_per_s:.1f} images/s (cosine {t.cosine:.6f})" for t in timings
    ))  # fmt: skip
    if best is None:
        raise ModelLoadError(
            "no runtime kept its vectors close enough to torch fp32 on the probe batch "
            f"({timings}); set EMBED_BACKEND and EMBED_PRECISION explicitly"
        )
    log.info("runtime: %s %s (fastest of the race)", best[1].name, best[1].precision)
    return best[1], timings


def _reference(build: Callable[[Option], Runtime], pixels: np.ndarray, ids: Ids,
               mask: Ids) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    runtime = build(Option("torch", "fp32"))
    return runtime.embed_pixels(pixels), runtime.embed_tokens(ids, mask)


def _read_verdict(
    path: Path, key: dict[str, Any], candidates: list[Option]
) -> tuple[Option, list[Timing]] | None:
    try:
        verdict = json.loads(path.read_text())
        if verdict["format"] != CHOICE_FORMAT or verdict["key"] != key:
            return None
        option = Option(verdict["choice"]["runtime"], verdict["choice"]["precision"])
        timings = [Timing(**t) for t in verdict["timings"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the unreadable runtime verdict %s (%s); measuring again", path, exc)
        return None
    return (option, timings) if option in candidates else None
