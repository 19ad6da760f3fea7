"""Every family embed_service embeds, each against transformers itself: the family's own
processor and `get_image_features` / `get_text_features` in fp32, normalized. A tiny random
model per family (tests/support/tiny_families.py) loads through the service's own code,
on torch and on ONNX Runtime, in fp32 and the lower precisions."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import transformers
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from PIL import Image

from embed_service.errors import ModelLoadError
from embed_service.families import FAMILIES
from embed_service.images import prepare
from embed_service.model import EmbeddingModel
from tests.support.imagegen import encode
from tests.support.stack import serving_embed
from tests.support.tiny_families import FAMILIES as FAMILY_NAMES
from tests.support.tiny_families import LINES, build_family

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# Multilingual, empty-ish, and longer than every family's context (cut, marked truncated).
TEXTS = [*LINES, "x", "a photo of " + "a cat and " * 120]
# Wide, tall and square pictures: squashing and cropping families differ on them.
SIZES = [(64, 64), (200, 48), (40, 180), (97, 131), (400, 12)]
# Cosines to transformers' fp32 reference: fp32 exactly as its authors' code; the lower
# precisions within what tests/embed_service/test_runtimes.py holds CLIP to.
MIN_COSINE = {("torch", "fp32"): 0.9999, ("onnx", "fp32"): 0.9999, ("torch", "bf16"): 0.995,
              ("torch", "int8"): 0.99, ("onnx", "int8"): 0.99}  # fmt: skip


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    family: str = request.param
    return build_family(tmp_path_factory.mktemp(family), family, seed=3)


def images() -> list[bytes]:
    """Noise over a gradient: every region differs, so a crop and a squash see apart."""
    rng = np.random.default_rng(5)
    out = []
    for width, height in SIZES:
        ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
        noisy = ramp * 0.6 + rng.integers(0, 100, (height, width, 3))
        out.append(encode(Image.fromarray(noisy.clip(0, 255).astype(np.uint8))))
    return out


def reference(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """What the family's authors' code gives: its processor, its tokenizer as its processor
    calls it, get_*_features in fp32, normalized."""
    config = transformers.AutoConfig.from_pretrained(folder)
    family = FAMILIES[config.model_type]
    model = getattr(transformers, family.model_class).from_pretrained(folder).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images()]
    if not family.text_mask:  # Siglip(2)Processor: padded to 64, no attention mask
        ids = tokenizer(TEXTS, padding="max_length", max_length=64, truncation=True,
                        return_tensors="pt")  # fmt: skip
        inputs: dict[str, Any] = {"input_ids": ids["input_ids"]}
    else:
        inputs = dict(tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt"))
    with torch.inference_mode():
        image = model.get_image_features(**dict(processor(pictures, return_tensors="pt")))
        text = model.get_text_features(**inputs)
    return _unit(image), _unit(text)


def _unit(out: Any) -> np.ndarray:
    tensor = getattr(out, "pooler_output", out)
    return torch.nn.functional.normalize(tensor.float(), dim=-1).numpy()


def load(folder: Path, cache: Path, backend: str, precision: str) -> EmbeddingModel:
    return EmbeddingModel.load(
        str(folder), device="cpu", backend=backend,  # type: ignore[arg-type]
        precision=precision, threads=2, cache_dir=cache, probe_batch=2,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize(("backend", "precision"), list(MIN_COSINE))
def test_each_family_embeds_as_transformers_does_on_every_runtime(
    family_dir: Path, tmp_path: Path, backend: str, precision: str
) -> None:
    expected_images, expected_texts = reference(family_dir)
    if (
        backend == "onnx"
        and FAMILIES[transformers.AutoConfig.from_pretrained(family_dir).model_type].naflex
    ):
        with pytest.raises(ModelLoadError, match="only torch runs"):
            load(family_dir, tmp_path, backend, precision)
        return  # NaFlex: left out of ONNX Runtime, never a wrong vector
    model = load(family_dir, tmp_path, backend, precision)
    assert (model.runtime_name, model.precision) == (backend, precision)
    pixels = np.stack([prepare(d, model.preprocessing, max_pixels=10**8) for d in images()])
    tokens = model.tokenize(TEXTS)
    got_images, got_texts = model.embed_pixels(pixels), model.embed_tokens(tokens)
    assert got_images.shape == expected_images.shape == (len(SIZES), model.dimension)
    assert got_texts.shape == expected_texts.shape
    floor = MIN_COSINE[(backend, precision)]
    image_cosines = np.sum(got_images * expected_images, axis=1)
    text_cosines = np.sum(got_texts * expected_texts, axis=1)
    assert image_cosines.min() >= floor, image_cosines
    assert text_cosines.min() >= floor, text_cosines
    assert tokens.truncated == [False] * len(LINES) + [False, True]
    # Texts alone give the same vectors as texts in a batch (SigLIP pads to its context).
    alone = model.embed_tokens(model.tokenize([TEXTS[0]]))
    assert float(alone[0] @ got_texts[0]) >= floor


def test_siglip_texts_are_padded_to_the_full_context(tmp_path: Path) -> None:
    folder = build_family(tmp_path / "siglip", "siglip")
    model = load(folder, tmp_path / "cache", "torch", "fp32")
    assert model.family.name == "siglip"
    assert model.max_text_tokens == 64
    assert model.tokenize(["x"]).input_ids.shape == (1, 64)
    clip = load(build_family(tmp_path / "clip", "clip"), tmp_path / "cache", "torch", "fp32")
    assert clip.tokenize(["x"]).input_ids.shape[1] < 10  # CLIP: to the longest in the batch


@pytest.mark.parametrize("family", FAMILY_NAMES)
async def test_the_service_reports_the_family_and_embeds_as_transformers(
    tmp_path: Path, family: str
) -> None:
    """Through gRPC with EMBED_BACKEND=auto: whichever runtime the race picks."""
    folder = build_family(tmp_path / family, family, seed=1)
    expected_images, expected_texts = reference(folder)
    async with (
        serving_embed(folder, precision="fp32", backend="auto") as app,
        grpc.aio.insecure_channel(app.address) as channel,
    ):
        stub = pb_grpc.EmbedServiceStub(channel)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest())
        assert info.family == family
        side = 32 if family == "siglip2" else 64  # NaFlex: a square's side at full budget
        assert (info.image_size, info.dimension) == (side, expected_images.shape[1])
        assert info.max_text_tokens == {"clip": 77, "metaclip_2": 77, "chinese_clip": 52,
                                        "altclip": 77}.get(family, 64)  # fmt: skip
        reply = await stub.EmbedImages(pb.EmbedImagesRequest(images=images()))
        got = np.asarray([e.values for e in reply.embeddings], dtype=np.float32)
        assert np.sum(got * expected_images, axis=1).min() >= 0.9999
        # One at a time, as a search sends them: alone, each text is what a batch gives.
        for text, expected in zip(TEXTS, expected_texts, strict=True):
            one = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=[text]))
            assert float(np.asarray(one.embeddings[0].values) @ expected) >= 0.9999


def test_every_family_loads_by_hub_id_from_the_hub_cache(tmp_path: Path) -> None:
    """The hub cache's own layout (models--<org>--<name>/snapshots/<revision>, refs/main),
    offline, in a process of its own: the hub reads its cache's place once, at import."""
    hub = tmp_path / "hub"
    for family in FAMILIES:
        repo = hub / f"models--tests--tiny-{family}"
        build_family(repo / "snapshots" / "0123abcd", family)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0123abcd")
    script = (
        "import sys\n"
        "from embed_service.model import EmbeddingModel\n"
        "for family in sys.argv[1:]:\n"
        "    m = EmbeddingModel.load(f'tests/tiny-{family}', device='cpu', backend='torch',\n"
        "                            precision='fp32')\n"
        "    print(family, m.family.name, m.dimension, m.embed_tokens(m.tokenize(['a'])).shape)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script, *FAMILIES],
        env=env, capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split() for line in done.stdout.splitlines()]
    assert [(line[0], line[1]) for line in lines] == [(f, f) for f in FAMILIES]
