"""Every CPU precision on every machine, and what `auto` picks on the machine it runs on.

CI runs on AVX2-only CPUs and on AVX512-BF16 ones. Exact comparisons elsewhere pin
fp32; here each precision runs for real (bf16 is emulated, and slow but correct, where
the CPU lacks it) and is held to the tolerance it needs against fp32.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from PIL import Image

from embed_service.cpu import cpu_flags, has_native_bf16
from embed_service.runtimes.race import options
from tests.support.imagegen import PALETTE, encode, picture
from tests.support.stack import serving_embed

# Cosine to fp32 that each precision must keep, with margin over what the tiny model
# gives (bf16 >= 0.99998, int8 >= 0.9997 for images and 0.9989 for texts, measured).
TOLERANCE = {"fp32": 0.999999, "bf16": 0.9995, "int8": 0.995}
PROTO_PRECISION = {
    "fp32": pb.PRECISION_FLOAT32,
    "bf16": pb.PRECISION_BFLOAT16,
    "int8": pb.PRECISION_INT8,
}
TEXTS = ["a red square", "a photo of a cat on a mat", "word " * 100]


def machine_flags() -> set[str]:
    """This CPU's flags, read here independently of the service's own reader."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def images() -> list[bytes]:
    return [
        encode(picture(colour, shape=shape, size=(96 + 8 * shape, 80)), "PNG")
        for colour in PALETTE
        for shape in range(3)
    ]


def exif_rotated() -> tuple[bytes, bytes]:
    upright = picture("purple", size=(160, 96), shape=2)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    return encode(upright), encode(stored, exif=exif.tobytes())


async def vectors(stub: pb_grpc.EmbedServiceStub, data: list[bytes]) -> np.ndarray:
    reply = await stub.EmbedImages(pb.EmbedImagesRequest(images=data))
    return np.asarray([e.values for e in reply.embeddings], dtype=np.float32)


async def text_vectors(stub: pb_grpc.EmbedServiceStub) -> np.ndarray:
    reply = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=TEXTS))
    return np.asarray([e.values for e in reply.embeddings], dtype=np.float32)


@pytest.fixture(params=["fp32", "bf16", "int8"])
async def precise_stub(
    request: pytest.FixtureRequest, clip_dir: Path
) -> AsyncIterator[tuple[str, pb_grpc.EmbedServiceStub]]:
    async with (
        serving_embed(clip_dir, precision=request.param) as app,
        grpc.aio.insecure_channel(app.address) as channel,
    ):
        yield request.param, pb_grpc.EmbedServiceStub(channel)


async def test_each_precision_stays_within_its_tolerance_of_fp32(
    precise_stub: tuple[str, pb_grpc.EmbedServiceStub], embed_stub: pb_grpc.EmbedServiceStub
) -> None:
    precision, stub = precise_stub
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.precision == PROTO_PRECISION[precision]
    data = images()
    reference, ours = await vectors(embed_stub, data), await vectors(stub, data)
    tolerance = TOLERANCE[precision]
    assert np.linalg.norm(ours, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert ((ours * reference).sum(axis=1) >= tolerance).all()
    # Self-query: each image's vector finds its own fp32-stored vector first.
    assert ((ours @ reference.T).argmax(axis=1) == np.arange(len(data))).all()
    texts = (await text_vectors(stub) * await text_vectors(embed_stub)).sum(axis=1)
    assert (texts >= tolerance).all(), texts
    upright, rotated = await vectors(stub, list(exif_rotated()))
    assert float(upright @ rotated) >= tolerance


def torch_auto(flags: frozenset[str]) -> str:
    """What EMBED_BACKEND=torch EMBED_PRECISION=auto runs on a CPU with these flags."""
    native = has_native_bf16(flags)
    found = options("torch", "auto", device=torch.device("cpu"), native_bf16=native,
                    onnx_providers=[])  # fmt: skip
    return found[0].precision


def test_auto_picks_bf16_exactly_where_the_cpu_has_it_natively() -> None:
    flags = machine_flags()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert torch_auto(cpu_flags()) == ("bf16" if native else "fp32")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "fma"}, "fp32"),  # AVX2-only EPYC
        ({"avx2", "avx512f", "avx512_vnni"}, "fp32"),  # AVX-512 without bf16
        ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),  # Zen 4 EPYC
        ({"avx2", "amx_bf16", "amx_tile"}, "bf16"),  # Sapphire Rapids
    ],
)
def test_auto_follows_the_flags_of_each_kind_of_cpu(flags: set[str], expected: str) -> None:
    assert has_native_bf16(frozenset(flags)) is (expected == "bf16")
    assert torch_auto(frozenset(flags)) == expected


async def test_a_service_on_auto_reports_what_auto_picked_on_this_machine(clip_dir: Path) -> None:
    flags = machine_flags()
    expected = (
        pb.PRECISION_BFLOAT16 if {"avx512_bf16", "amx_bf16"} & flags else pb.PRECISION_FLOAT32
    )
    async with serving_embed(clip_dir, precision="auto") as app:
        async with grpc.aio.insecure_channel(app.address) as channel:
            info = await pb_grpc.EmbedServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest())
        assert info.precision == expected
