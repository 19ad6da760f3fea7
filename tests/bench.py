"""`make bench`: embed_service throughput against the tutorial way, in one process.

Both sides use a ViT-B/32-sized CLIP with random weights (as costly as the real
one) and the same 640x480 JPEGs. The baseline is the Node.js seed's loop: one image
at a time through the processor and the full CLIP forward with an empty text. The
service is the real gRPC server with concurrent clients. Speeds are reported as a
ratio, since absolute numbers depend on the machine.

    python -m tests.bench [--images 96] [--clients 8] [--precision fp32 int8]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

from embed_service.app import EmbedApp
from embed_service.config import EmbedSettings
from tests.tiny_clip import build_clip

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


def tutorial_loop(model_dir: Path, images: list[bytes]) -> float:
    """Images/s of the seed's way: one image per full CLIP forward with an empty text."""
    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = CLIPImageProcessorPil.from_pretrained(model_dir)
    text = tokenizer([""], padding=True, truncation=True, return_tensors="pt")

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


async def service(
    model_dir: Path, images: list[bytes], *, clients: int, per_request: int, precision: str
) -> tuple[float, float, str]:
    """Images/s and texts/s through the gRPC service with concurrent clients."""
    settings = EmbedSettings.model_validate(
        {"model": str(model_dir), "addr": "127.0.0.1:0", "precision": precision}
    )
    app = EmbedApp(settings)
    await app.start()
    await app.load()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = pb_grpc.EmbedServiceStub(channel)
            info = await stub.GetModelInfo(pb.GetModelInfoRequest())
            requests = [images[i : i + per_request] for i in range(0, len(images), per_request)]
            await stub.EmbedImages(pb.EmbedImagesRequest(images=requests[0]))
            queue: asyncio.Queue[list[bytes]] = asyncio.Queue()
            for request in requests:
                queue.put_nowait(request)

            async def client() -> None:
                while not queue.empty():
                    batch = queue.get_nowait()
                    reply = await stub.EmbedImages(pb.EmbedImagesRequest(images=batch))
                    assert all(len(e.values) == info.dimension for e in reply.embeddings)

            start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            image_rate = len(images) / (time.perf_counter() - start)

            texts = [f"a photo of thing number {i} on a table" for i in range(256)]
            start = time.perf_counter()
            await asyncio.gather(
                *(
                    stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts[i : i + 16]))
                    for i in range(0, len(texts), 16)
                )
            )
            text_rate = len(texts) / (time.perf_counter() - start)
            assert app.engine is not None
            sizes = dict(sorted(app.engine.image_batches.sizes.items()))
        return image_rate, text_rate, f"device={info.device} forward batch sizes={sizes}"
    finally:
        await app.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--baseline-images", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument("--precision", nargs="+", default=["auto", "int8"])
    args = parser.parse_args()

    model_dir = CACHE / "clip-vit-b32-random"
    if not (model_dir / "config.json").exists():
        print(f"building a ViT-B/32-sized CLIP with random weights in {model_dir} ...")
        build_clip(model_dir, size="base")
    images = photos(args.images)
    capability = torch.backends.cpu.get_cpu_capability()
    print(
        f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU capability {capability}"
    )

    baseline = tutorial_loop(model_dir, images[: args.baseline_images])
    print(
        f"tutorial loop (1 image per full CLIP forward, empty text, fp32): {baseline:7.2f} images/s"
    )
    for precision in args.precision:
        image_rate, text_rate, detail = asyncio.run(
            service(
                model_dir,
                images,
                clients=args.clients,
                per_request=args.per_request,
                precision=precision,
            )
        )
        print(
            f"embed_service over gRPC, precision={precision:5s} "
            f"({args.clients} clients x {args.per_request} images/request): "
            f"{image_rate:7.2f} images/s  ratio {image_rate / baseline:5.2f}x  "
            f"texts {text_rate:7.1f}/s  [{detail}]"
        )


if __name__ == "__main__":
    main()
