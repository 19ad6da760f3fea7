"""The runtimes (torch, ONNX Runtime) x precisions, the ONNX cache, and EMBED_BACKEND=auto.

Every runtime loads the session's tiny CLIP through the real loading code; ONNX towers
are exported from that loaded model into a cache folder of the test's own.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from transformers import CLIPModel

from embed_service.errors import ModelLoadError
from embed_service.images import prepare
from embed_service.model import EmbeddingModel, fingerprint_of
from embed_service.runtimes import onnx_export, race
from embed_service.runtimes.base import Runtime
from embed_service.runtimes.race import Option
from embed_service.runtimes.torch_runtime import TorchRuntime
from tests.support.imagegen import PALETTE, encode, picture
from tests.support.stack import serving_embed
from tests.support.tiny_clip import build_clip

TEXTS = ["a red square", "a photo of a cat on a mat", "word " * 100, "x"]
# Cosine to torch fp32 each kind must keep on the tiny model, with margin (measured,
# images / texts: onnx fp32 0.9999999 / 0.9999999, torch bf16 0.99995 / 0.99995,
# torch int8 0.9997 / 0.9993, onnx int8 0.9998 / 0.9998).
TOLERANCE = {
    ("onnx", "fp32"): 0.99999,
    ("torch", "bf16"): 0.9995,
    ("torch", "int8"): 0.995,
    ("onnx", "int8"): 0.995,
}


def pixels(model: EmbeddingModel) -> np.ndarray:
    images = [
        encode(picture(colour, shape=shape, size=(96 + 8 * shape, 80)))
        for colour in PALETTE
        for shape in range(3)
    ]
    return np.stack([prepare(data, model.preprocessing, max_pixels=10**8) for data in images])


def load(clip_dir: Path, cache: Path, backend: str, precision: str) -> EmbeddingModel:
    return EmbeddingModel.load(
        str(clip_dir),
        device="cpu",
        backend=backend,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        threads=2,
        cache_dir=cache,
        probe_batch=4,
    )


def embeddings(model: EmbeddingModel) -> tuple[np.ndarray, np.ndarray]:
    return model.embed_pixels(pixels(model)), model.embed_tokens(model.tokenize(TEXTS))


@pytest.fixture(scope="module")
def reference(clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, ...]:
    return embeddings(load(clip_dir, tmp_path_factory.mktemp("cache"), "torch", "fp32"))


@pytest.mark.parametrize(("backend", "precision"), list(TOLERANCE))
def test_each_runtime_and_precision_stays_within_its_tolerance_of_torch_fp32(
    clip_dir: Path, tmp_path: Path, reference: tuple[np.ndarray, ...], backend: str,
    precision: str,
) -> None:  # fmt: skip
    model = load(clip_dir, tmp_path, backend, precision)
    assert (model.runtime_name, model.precision) == (backend, precision)
    images, texts = embeddings(model)
    assert images.dtype == np.float32
    assert images.shape == reference[0].shape
    assert np.linalg.norm(images, axis=1) == pytest.approx(1.0, abs=1e-5)
    floor = TOLERANCE[(backend, precision)]
    assert (images * reference[0]).sum(axis=1).min() >= floor
    assert (texts * reference[1]).sum(axis=1).min() >= floor
    # Each image still finds its own fp32 vector first.
    assert ((images @ reference[0].T).argmax(axis=1) == np.arange(len(images))).all()
    # A batch of one, padded to another length, goes through the same graph (int8 scales
    # its activations per batch, so it moves within its tolerance).
    alone = model.embed_tokens(model.tokenize(TEXTS[3:]))
    assert float(alone[0] @ texts[3]) >= (floor if precision == "int8" else 0.99999)


def test_the_export_is_cached_reused_and_keyed_by_the_weights(
    tmp_path: Path, clip_dir: Path
) -> None:
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    fingerprint = fingerprint_of(clip)
    args = {"cache_dir": tmp_path, "precision": "fp32", "device": torch.device("cpu")}
    first = onnx_export.exported(clip, fingerprint=fingerprint, **args)  # type: ignore[arg-type]
    stamp = first.vision.stat().st_mtime_ns
    again = onnx_export.exported(clip, fingerprint=fingerprint, **args)  # type: ignore[arg-type]
    assert (first.reused, again.reused) == (False, True)
    assert again.vision == first.vision
    assert again.vision.stat().st_mtime_ns == stamp

    other = CLIPModel.from_pretrained(build_clip(tmp_path / "other-clip", seed=1)).eval()
    assert fingerprint_of(other) != fingerprint
    theirs = onnx_export.exported(other, fingerprint=fingerprint_of(other), **args)  # type: ignore[arg-type]
    assert not theirs.reused
    assert theirs.vision.parent != first.vision.parent
    assert first.vision.exists()  # the first model's entry is untouched
    entries = sorted(p.name for p in (tmp_path / "onnx").iterdir() if p.is_dir())
    assert len(entries) == 2
    assert all(not name.startswith(".") for name in entries)


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_a_damaged_cache_entry_is_exported_again_not_trusted(
    tmp_path: Path, clip_dir: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = load(clip_dir, tmp_path, "onnx", "fp32")
    expected = embeddings(model)
    entry = next(p for p in (tmp_path / "onnx").iterdir() if p.is_dir())
    vision = entry / "vision.onnx"
    size = vision.stat().st_size
    if damage == "truncate":
        with vision.open("r+b") as file:
            file.truncate(size // 2)
    elif damage == "flip":
        data = bytearray(vision.read_bytes())
        data[size // 2] ^= 0xFF
        vision.write_bytes(bytes(data))
    else:
        (entry / "manifest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="embed_service.runtimes.onnx_export"):
        again = load(clip_dir, tmp_path, "onnx", "fp32")
    assert "exporting again" in caplog.text
    assert vision.stat().st_size == size
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["files"]["vision.onnx"]["bytes"] == size
    images, texts = embeddings(again)
    np.testing.assert_allclose(images, expected[0], atol=1e-6)
    np.testing.assert_allclose(texts, expected[1], atol=1e-6)


def test_auto_races_the_runtimes_once_and_keeps_its_verdict(
    tmp_path: Path, clip_dir: Path, reference: tuple[np.ndarray, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    model = load(clip_dir, tmp_path, "auto", "auto")
    raced = {t.option for t in model.timings}
    assert {"torch fp32", "onnx fp32"} <= raced
    assert not any("int8" in o for o in raced)
    assert f"{model.runtime_name} {model.precision}" in raced
    winner = max((t for t in model.timings if t.cosine >= 0.999), key=lambda t: t.images_per_s)
    assert winner.option == f"{model.runtime_name} {model.precision}"
    images, _ = embeddings(model)
    assert (images * reference[0]).sum(axis=1).min() >= 0.999
    (verdict,) = (tmp_path / "runtime").glob("*.json")

    def no_race(*args: object) -> None:
        raise AssertionError("raced again although a verdict was cached")

    monkeypatch.setattr(race, "_race", no_race)
    again = load(clip_dir, tmp_path, "auto", "auto")
    assert (again.runtime_name, again.precision) == (model.runtime_name, model.precision)
    assert again.timings == model.timings

    monkeypatch.undo()
    verdict.write_text('{"format": 1, "choice": ')
    third = load(clip_dir, tmp_path, "auto", "auto")
    assert {t.option for t in third.timings} == raced
    assert json.loads(verdict.read_text())["choice"]["runtime"] == third.runtime_name


class Scrambled:
    """A real runtime whose vectors are rolled: what a broken export would give."""

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self.name = inner.name
        self.precision = inner.precision

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return np.roll(self.inner.embed_pixels(pixels), 1, axis=1)

    def embed_tokens(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.roll(self.inner.embed_tokens(ids, mask), 1, axis=1)

    def set_lanes(self, lanes: int) -> None:
        self.inner.set_lanes(lanes)


def test_torch_bf16_on_cpu_runs_a_bf16_copy_and_leaves_the_loaded_model_fp32(
    clip_dir: Path,
) -> None:
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    runtime = TorchRuntime(clip, torch.device("cpu"), "bf16")
    # Weights cast once at load, not by autocast in every pass; the race builds its other
    # candidates (and the fp32 reference) from the same loaded model, which stays fp32.
    assert {p.dtype for p in runtime._vision.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in clip.parameters()} == {torch.float32}
    fp32 = TorchRuntime(clip, torch.device("cpu"), "fp32")
    size = clip.config.vision_config.image_size
    probe = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    ours, reference = runtime.embed_pixels(probe), fp32.embed_pixels(probe)
    assert ours.dtype == np.float32
    assert (ours * reference).sum(axis=1).min() >= TOLERANCE[("torch", "bf16")]


def test_the_race_never_picks_a_runtime_whose_vectors_drift(clip_dir: Path) -> None:
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    model = load(clip_dir, clip_dir.parent / "unused-cache", "torch", "fp32")

    def build(option: Option) -> Runtime:
        real = TorchRuntime(clip, torch.device("cpu"), option.precision)
        return Scrambled(real) if option.precision == "bf16" else real

    def tokens(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        t = model.tokenize(texts)
        return t.input_ids, t.attention_mask

    options = [Option("torch", "fp32"), Option("torch", "bf16")]
    runtime, timings = race.choose(options, build, pixels=model.preprocessing.probe(4),
        tokenize=tokens, verdicts=None, key={})  # fmt: skip
    assert (runtime.name, runtime.precision) == ("torch", "fp32")
    assert [t.option for t in timings] == ["torch fp32", "torch bf16"]
    assert timings[0].cosine == pytest.approx(1.0, abs=1e-6)
    assert timings[1].cosine < 0.9

    with pytest.raises(ModelLoadError, match="EMBED_BACKEND"):
        race.choose(options[1:] * 2, build, pixels=model.preprocessing.probe(4),
            tokenize=tokens, verdicts=None, key={})  # fmt: skip


@pytest.mark.parametrize(
    ("backend", "precision", "cuda", "bf16", "providers", "expected"),
    [
        ("auto", "auto", False, True, [], ["torch fp32", "torch bf16", "onnx fp32"]),
        ("auto", "auto", False, False, [], ["torch fp32", "onnx fp32"]),
        ("auto", "int8", False, False, [], ["torch int8", "onnx int8"]),
        ("auto", "bf16", False, True, [], ["torch bf16"]),
        ("auto", "auto", True, False, [], ["torch fp32", "torch fp16"]),
        ("auto", "auto", True, False, ["CUDAExecutionProvider"],
         ["torch fp32", "torch fp16", "onnx fp32", "onnx fp16"]),
        ("torch", "auto", False, True, [], ["torch bf16"]),
        ("torch", "auto", False, False, [], ["torch fp32"]),
        ("onnx", "auto", False, True, [], ["onnx fp32"]),
        ("onnx", "int8", False, False, [], ["onnx int8"]),
        ("onnx", "auto", True, False, ["CUDAExecutionProvider"], ["onnx fp16"]),
    ],
)  # fmt: skip
def test_what_each_backend_and_precision_may_run(
    backend: str, precision: str, cuda: bool, bf16: bool, providers: list[str],
    expected: list[str],
) -> None:  # fmt: skip
    device = torch.device("cuda" if cuda else "cpu")
    found = race.options(backend, precision, device=device, native_bf16=bf16,  # type: ignore[arg-type]
                                   onnx_providers=providers)  # fmt: skip
    assert [str(o) for o in found] == expected


@pytest.mark.parametrize(
    ("backend", "precision", "cuda", "message"),
    [
        ("onnx", "bf16", False, "not offered by EMBED_BACKEND=onnx"),
        ("onnx", "fp16", False, "fp16 needs CUDA"),
        ("onnx", "auto", True, "onnxruntime-gpu"),
        ("torch", "int8", True, "int8 runs on CPU only"),
        ("auto", "fp16", False, "fp16 needs CUDA"),
    ],
)
def test_a_combination_that_cannot_run_says_why(
    backend: str, precision: str, cuda: bool, message: str
) -> None:
    device = torch.device("cuda" if cuda else "cpu")
    with pytest.raises(ModelLoadError, match=message):
        race.options(backend, precision, device=device, native_bf16=True,  # type: ignore[arg-type]
                               onnx_providers=[])  # fmt: skip


async def test_get_model_info_reports_the_runtime(clip_dir: Path, tmp_path: Path) -> None:
    async with serving_embed(clip_dir, backend="onnx", cache_dir=tmp_path) as app:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = pb_grpc.EmbedServiceStub(channel)
            info = await stub.GetModelInfo(pb.GetModelInfoRequest())
            reply = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=["a red square"]))
        assert (info.runtime, info.precision) == (pb.RUNTIME_ONNX, pb.PRECISION_FLOAT32)
        torch_model = load(clip_dir, tmp_path, "torch", "fp32")
        expected = torch_model.embed_tokens(torch_model.tokenize(["a red square"]))[0]
        assert info.fingerprint == torch_model.fingerprint  # same weights, same fingerprint
        assert float(np.asarray(reply.embeddings[0].values) @ expected) >= 0.99999


@pytest.mark.parametrize("backend", ["onnx", "auto"])
def test_an_unwritable_cache_dir_stops_the_start_naming_the_variable(
    clip_dir: Path, tmp_path: Path, backend: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelLoadError, match="EMBED_CACHE_DIR"):
        load(clip_dir, blocker / "cache", backend, "auto")


def test_auto_leaves_out_a_runtime_that_cannot_be_prepared(
    clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export, "_export_into", no_space)
    with pytest.raises(ModelLoadError, match="EMBED_BACKEND=torch"):
        load(clip_dir, tmp_path, "onnx", "fp32")
    model = load(clip_dir, tmp_path, "auto", "fp32")
    assert (model.runtime_name, model.precision) == ("torch", "fp32")
    assert [t.option for t in model.timings] == ["torch fp32"]
    assert not list((tmp_path / "runtime").glob("*.json"))  # no verdict that never saw onnx


def test_lanes_tokenizing_at_once_each_get_their_own_padding(
    clip_dir: Path, tmp_path: Path
) -> None:
    """A fast tokenizer keeps its padding settings on itself between calls: unguarded, two
    threads tokenizing texts of different lengths got ragged ids from each other's calls."""
    model = load(clip_dir, tmp_path, "torch", "fp32")
    failures: list[str] = []

    def tokenize_often(words: int) -> None:
        texts = ["word " * (words + i % 30) for i in range(16)]
        expected = model.tokenize(texts).input_ids.shape
        for _ in range(150):
            try:
                assert model.tokenize(texts).input_ids.shape == expected
            except (AssertionError, ValueError) as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=tokenize_often, args=(n * 9,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
