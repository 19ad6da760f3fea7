"""`make bench`: embed_service throughput, the machine's limits, and the tutorial way.

Everything uses one model, EMBED_MODEL or a `--model` of random weights built here at a
real checkpoint's size (as costly as the real one), and the same 640x480 JPEGs, in one
process, one run:
- the machine: GEMM GFLOP/s (fp32; bf16 where native) and the vision tower's GFLOP per
  image, hence each precision's ceiling in images/s;
- the baseline, the Node.js seed's loop: one image at a time through the processor and
  the full model forward with an empty text;
- for each runtime x precision this machine has: its bare forward (pre-decoded pixels,
  batches of EMBED_MODEL_BATCH_SIZE, straight into the loaded runtime, one pass per lane
  at once as the service runs a backlog; one pass on every thread beside it) and the
  real gRPC service with concurrent clients sending JPEGs; pipeline efficiency is
  service / bare.
Ratios are what carry across machines; the absolute numbers are this machine's.

    python -m tests.benchmarks.embed [--model siglip-b16-224] [--images 192] [--clients 8]
                                     [--only torch:fp32 onnx:int8]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import torch
import transformers
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

from embed_service.app import EmbedApp
from embed_service.config import EmbedSettings
from embed_service.cpu import cpu_flags, has_native_bf16
from embed_service.errors import ModelLoadError
from embed_service.families import FAMILIES
from embed_service.images import prepare
from embed_service.model import EmbeddingModel
from embed_service.runtimes.onnx_runtime import onnx_providers
from embed_service.runtimes.race import options
from tests.support.tiny_families import build_family

CACHE = Path(os.environ.get("BENCH_DIR", ".bench"))


def photos(count: int, seed: int = 0) -> list[bytes]:
    """Photo-like 640x480 JPEGs: smooth gradients plus noise, so decoding costs what it does."""
    rng = np.random.default_rng(seed)
    out = []
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    for _ in range(count):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([x / 640 * a, y / 480 * b, (x + y) / 1120 * c], axis=-1) * 255
        noisy = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


# What --model builds: random weights at the size of the checkpoint named.
MODELS = {
    "clip-b32": ("clip", "openai/clip-vit-base-patch32"),
    "siglip-b16-224": ("siglip", "google/siglip-base-patch16-224"),
    "siglip2-b16-naflex": ("siglip2", "google/siglip2-base-patch16-naflex"),
}


def loaded(model: str | Path) -> tuple[Any, Any]:
    """The model (by its family's class) and its config, as transformers loads them."""
    config = AutoConfig.from_pretrained(model)
    family = FAMILIES[config.model_type]
    return getattr(transformers, family.model_class).from_pretrained(model).eval(), config


def tutorial_loop(model_dir: str | Path, images: list[bytes]) -> float:
    """Images/s of the seed's way: one image per full forward with an empty text."""
    model, config = loaded(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    padding = FAMILIES[config.model_type].padding
    text = tokenizer([""], padding=padding, truncation=True, return_tensors="pt")
    if not FAMILIES[config.model_type].text_mask:
        del text["attention_mask"]

    def one(data: bytes) -> None:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        pixels = processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            model(**text, **pixels)

    one(images[0])
    start = time.perf_counter()
    for data in images:
        one(data)
    return len(images) / (time.perf_counter() - start)


ROUNDS = 3
T = TypeVar("T")
TEXTS = [f"a photo of thing number {i} on a table" for i in range(256)]
FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def apart(work: Callable[..., T], *args: Any) -> T:
    """Runs `work` on a thread that then ends: libgomp keeps a team of threads for every
    thread that ran a parallel region, and beside the service's own it would slow the
    service's passes (see embed_service/lanes.py)."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(work, *args).result()


def gemm_gflops(dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """Sustained matmul GFLOP/s of this machine on torch's threads."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def vision_gflop(model_dir: str | Path) -> float:
    """FLOPs of one 640x480 image through the vision tower and projection, as the model's
    own processor prepares it, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = loaded(model_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    inputs = processor(Image.new("RGB", (640, 480)), return_tensors="pt")
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.get_image_features(**dict(inputs))
    return counter.get_total_flops() / 1e9


@dataclass
class Result:
    option: str
    bare_images: float
    service_images: float
    bare_texts: float
    service_texts: float
    detail: str

    @property
    def efficiency(self) -> float:
        return self.service_images / self.bare_images

    @property
    def text_efficiency(self) -> float:
        return self.service_texts / self.bare_texts


def bare(model: EmbeddingModel, pixels: np.ndarray, batch: int, seconds: float = 1.5) -> float:
    """Images/s of the loaded runtime alone, on pre-decoded pixels in full batches."""
    chunks = [pixels[i : i + batch] for i in range(0, len(pixels) - batch + 1, batch)]
    model.embed_pixels(chunks[0])
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        model.embed_pixels(chunks[(done // batch) % len(chunks)])
        done += batch
    return done / (time.perf_counter() - start)


def bare_texts(model: EmbeddingModel, batch: int) -> float:
    tokens = [model.tokenize(TEXTS[i : i + batch]) for i in range(0, len(TEXTS), batch)]
    model.embed_tokens(tokens[0])
    start = time.perf_counter()
    for t in tokens:
        model.embed_tokens(t)
    return len(TEXTS) / (time.perf_counter() - start)


async def service_images(stub: pb_grpc.EmbedServiceStub, images: list[bytes], clients: int,
                         per_request: int, dimension: int) -> float:  # fmt: skip
    """Images/s of `clients` concurrent callers sending `per_request` JPEGs per call."""
    queue = [images[i : i + per_request] for i in range(0, len(images), per_request)][::-1]

    async def client() -> None:
        while queue:
            reply = await stub.EmbedImages(pb.EmbedImagesRequest(images=queue.pop()))
            assert all(len(e.values) == dimension for e in reply.embeddings)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(images) / (time.perf_counter() - start)


async def service_texts(stub: pb_grpc.EmbedServiceStub) -> float:
    start = time.perf_counter()
    calls = [stub.EmbedTexts(pb.EmbedTextsRequest(texts=TEXTS[i : i + 16]))
             for i in range(0, len(TEXTS), 16)]  # fmt: skip
    await asyncio.gather(*calls)
    return len(TEXTS) / (time.perf_counter() - start)


async def measure(
    model_dir: str | Path, images: list[bytes], *, runtime: str, precision: str, clients: int,
    per_request: int, cache: Path, extra: dict[str, str],
) -> Result:  # fmt: skip
    """The service's images/s and texts/s, then the same loaded runtime's bare forward."""
    values = {"model": str(model_dir), "addr": "127.0.0.1:0", "backend": runtime,
              "precision": precision, "cache_dir": str(cache)}  # fmt: skip
    settings = EmbedSettings.model_validate({**values, **extra})
    app = EmbedApp(settings)
    await app.start()
    await app.load()
    try:
        engine = app.engine
        assert engine is not None
        model = engine.model
        batch = settings.model_batch_size
        spec = model.preprocessing
        pixels = np.stack([prepare(d, spec, max_pixels=10**8) for d in images[: 3 * batch]])
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = pb_grpc.EmbedServiceStub(channel)
            dimension = (await stub.GetModelInfo(pb.GetModelInfoRequest())).dimension
            await stub.EmbedImages(pb.EmbedImagesRequest(images=images[:per_request]))
            await stub.EmbedTexts(pb.EmbedTextsRequest(texts=TEXTS[:16]))
            # Rounds alternate bare and service so both see the same state of a noisy
            # machine; each figure is the median of its rounds.
            rounds: dict[str, list[float]] = {"bi": [], "si": [], "bt": [], "st": [], "busy": [],
                                              "wide": []}  # fmt: skip
            stats = engine.image_batches
            lanes = engine.lanes

            async def bare_lanes(one: Callable[[], float]) -> float:
                # The way the service runs a backlog: every lane's pass at once.
                rates = await asyncio.gather(
                    *(lanes.run(one, shape=lanes.count) for _ in range(lanes.count))
                )
                return sum(rates)

            for _ in range(ROUNDS):
                rounds["bi"].append(await bare_lanes(functools.partial(bare, model, pixels, batch)))
                if lanes.count > 1:
                    rounds["wide"].append(
                        await engine.on_model_thread(lambda: bare(model, pixels, batch))
                    )
                busy, start = stats.busy_s, time.perf_counter()
                rounds["si"].append(await service_images(stub, images, clients, per_request,
                                                         dimension))  # fmt: skip
                elapsed = time.perf_counter() - start
                rounds["busy"].append((stats.busy_s - busy) / (elapsed * lanes.count))
                rounds["bt"].append(await bare_lanes(functools.partial(bare_texts, model, 16)))
                rounds["st"].append(await service_texts(stub))
        sizes = dict(sorted(stats.sizes.items()))
        mid = {k: float(np.median(v)) for k, v in rounds.items() if v}
        wide = f" (one pass on every thread: {mid['wide']:.1f} images/s)" if "wide" in mid else ""
        return Result(
            option=f"{runtime} {precision}",
            bare_images=mid["bi"],
            service_images=mid["si"],
            bare_texts=mid["bt"],
            service_texts=mid["st"],
            detail=(
                f"{lanes.count} lane{'s' if lanes.count > 1 else ''}{wide}, busy "
                f"{mid['busy']:.0%} of the service's time; "
                f"batch sizes {sizes}"
            ),
        )
    finally:
        await app.stop(0)


def available(only: list[str] | None) -> list[tuple[str, str]]:
    """Every runtime x precision this machine runs natively (emulated bf16 is left out)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    native = has_native_bf16(cpu_flags())
    found: list[tuple[str, str]] = []
    for precision in ("fp32", "bf16", "fp16", "int8"):
        if precision == "bf16" and not native and device.type == "cpu":
            continue
        try:
            for option in options("auto", precision, device=device, native_bf16=native,
                                  onnx_providers=onnx_providers()):  # fmt: skip
                found.append((option.runtime, option.precision))
        except ModelLoadError:  # this precision does not run here
            continue
    if only:
        found = [f for f in found if f"{f[0]}:{f[1]}" in only]
    return found


def bench_model(name: str | None) -> str | Path:
    """What the bench runs: EMBED_MODEL as the service would load it, or a built model."""
    if name is None and os.environ.get("EMBED_MODEL"):
        return os.environ["EMBED_MODEL"]
    family, like = MODELS[name or "clip-b32"]
    folder = CACHE / f"{name or 'clip-b32'}-random"
    if not (folder / "config.json").exists():
        print(f"building a {like}-sized {family} with random weights in {folder} ...")
        build_family(folder, family, size="base")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192, help="per round")
    parser.add_argument("--baseline-images", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument("--only", nargs="+", help="runtime:precision pairs, e.g. onnx:int8")
    parser.add_argument(
        "--model", choices=sorted(MODELS),
        help="build a model of random weights at this size (default: $EMBED_MODEL if set, "
        "else clip-b32)",
    )  # fmt: skip
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                        help="service settings, e.g. decode_workers=1")  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()

    model_dir = bench_model(args.model)
    cache = CACHE / "runtime-cache"
    images = photos(args.images)
    flags = cpu_flags()
    import onnxruntime

    print(f"model: {model_dir} ({AutoConfig.from_pretrained(model_dir).model_type})")
    print(
        f"machine: {os.cpu_count()} cores, flags {' '.join(f for f in FLAGS_SHOWN if f in flags)}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}), onnxruntime {onnxruntime.__version__}"
    )
    peaks = {"fp32": apart(gemm_gflops, torch.float32)}
    if has_native_bf16(flags):
        peaks["bf16"] = apart(gemm_gflops, torch.bfloat16)
    per_image = apart(vision_gflop, model_dir)
    print(
        "GEMM: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
        + f"; vision tower {per_image:.2f} GFLOP/image, so at GEMM peak "
        + ", ".join(f"{k} {v / per_image:.1f} images/s" for k, v in peaks.items())
    )

    baseline = apart(tutorial_loop, model_dir, images[: args.baseline_images])
    print(f"tutorial loop (1 image per full forward, empty text, fp32): {baseline:.2f} images/s")
    results = []
    print(f"{'runtime':14s} {'bare img/s':>10s} {'service':>8s} {'effic.':>7s} {'vs tut.':>7s}"
          f" {'bare txt/s':>10s} {'service':>8s} {'effic.':>7s}")  # fmt: skip
    for runtime, precision in available(args.only):
        extra = dict(pair.split("=", 1) for pair in args.set)
        run = measure(model_dir, images, runtime=runtime, precision=precision,
                      clients=args.clients, per_request=args.per_request, cache=cache,
                      extra=extra)  # fmt: skip
        r = asyncio.run(run)
        results.append(r)
        print(
            f"{r.option:14s} {r.bare_images:10.1f} {r.service_images:8.1f} "
            f"{r.efficiency:7.0%} {r.service_images / baseline:6.2f}x "
            f"{r.bare_texts:10.0f} {r.service_texts:8.0f} {r.text_efficiency:7.0%}  [{r.detail}]"
        )
    if not results:
        raise SystemExit("no runtime matched --only")
    best = max(results, key=lambda r: r.service_images)
    texts = max(results, key=lambda r: r.service_texts)
    print(
        f"best: {best.option} {best.service_images:.1f} images/s = "
        f"{best.service_images / baseline:.2f}x the tutorial loop, "
        f"{best.efficiency:.0%} of its bare forward"
    )
    print(
        f"best texts: {texts.option} {texts.service_texts:.0f} texts/s, "
        f"{texts.text_efficiency:.0%} of its bare forward"
    )
    print(f"(bench took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
