"""The model: load, then the forward passes (the "core" step).

Loading always goes through transformers' `from_pretrained`, from a hub id or a local
directory, with the classes of the checkpoint's family (families.py); the fingerprint is
taken from those weights. The forward passes then run
on the runtime EMBED_BACKEND and EMBED_PRECISION resolve to (race.py):
torch itself, or ONNX Runtime on towers exported from that same model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from embed_service import hub
from embed_service.config import Backend, Precision
from embed_service.cpu import cpu_flags, has_native_bf16, has_vnni
from embed_service.errors import ModelLoadError
from embed_service.families import Family, family_of
from embed_service.images import Preprocessing
from embed_service.runtimes import onnx_export, race
from embed_service.runtimes.base import Ids, Runtime
from embed_service.runtimes.onnx_runtime import OnnxRuntime, onnx_providers
from embed_service.runtimes.race import Option, Timing
from embed_service.runtimes.torch_runtime import TorchRuntime

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TokenizedTexts:
    input_ids: Ids
    attention_mask: Ids
    truncated: list[bool]


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"EMBED_DEVICE={requested} but no CUDA device is available")
    return device


def is_local_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).expanduser().exists()


def fingerprint_of(module: torch.nn.Module) -> str:
    """Digest of every weight's name, shape, dtype and bytes: equal digests embed alike."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


class EmbeddingModel:
    """One loaded dual encoder: its family, preprocessing facts, tokenizer and the runtime
    of its towers."""

    def __init__(
        self,
        *,
        model_id: str,
        family: Family,
        config: Any,
        tokenizer: Any,
        preprocessing: Preprocessing,
        runtime: Runtime,
        device: torch.device,
        fingerprint: str,
        timings: Sequence[Timing] = (),
    ) -> None:
        self.model_id = model_id
        self.family = family
        self._tokenizer = tokenizer
        # A fast tokenizer keeps its padding and truncation settings on itself between
        # calls: two lanes tokenizing at once can get each other's (ragged ids).
        self._tokenizing = threading.Lock()
        self.preprocessing = preprocessing
        self.runtime = runtime
        self.device = device
        self.fingerprint = fingerprint
        self.timings = list(timings)
        self.dimension = family.dimension(config)
        self.image_size = preprocessing.square_side
        self.max_text_tokens = family.max_text_tokens(config, tokenizer)

    @property
    def precision(self) -> str:
        return self.runtime.precision

    @property
    def runtime_name(self) -> str:
        return self.runtime.name

    @classmethod
    def load(
        cls,
        model_id: str,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        threads: int = 0,
        backend: Backend = "auto",
        cache_dir: Path | None = None,
        probe_batch: int = 16,
    ) -> EmbeddingModel:
        """Loads model, tokenizer and processor config, then picks the runtime.

        Raises ModelLoadError saying how to fix it."""
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        if is_local_path(model_id) and not Path(model_id).expanduser().is_dir():
            raise ModelLoadError(
                f"EMBED_MODEL={model_id!r} looks like a local directory, but there is no "
                "directory there. Point EMBED_MODEL at a folder written by save_pretrained "
                "(config.json, weights, tokenizer and preprocessor files), or at a hub id "
                "such as openai/clip-vit-base-patch32 on a machine that can download it."
            )
        torch_device = resolve_device(device)
        local = is_local_path(model_id)
        source = str(Path(model_id).expanduser()) if local else model_id
        unreachable = None
        if not local and not hub.offline_by_choice():
            unreachable = hub.unreachable_reason(hub.endpoint())
            if unreachable:
                log.warning(
                    "cannot reach the model hub at %s (%s); loading %s from the local cache only",
                    hub.endpoint(),
                    unreachable,
                    model_id,
                )
        cache_only = {"local_files_only": True} if unreachable else {}
        # A service log (and make bench's table) is no terminal: no "Loading weights" bars.
        transformers.logging.disable_progress_bar()
        try:
            family = family_of(AutoConfig.from_pretrained(source, **cache_only), model_id)
            model_class = getattr(transformers, family.model_class)
            clip = model_class.from_pretrained(source, **cache_only).eval()
            tokenizer = AutoTokenizer.from_pretrained(source, **cache_only)
            # The PIL backend: the same pixels as the authors' processor, without torchvision.
            processor = AutoImageProcessor.from_pretrained(source, backend="pil", **cache_only)
        except (OSError, ValueError, ImportError) as exc:
            why = (
                f"the model hub at {hub.endpoint()} cannot be reached ({unreachable}) and no "
                "copy of the model is cached here"
                if unreachable
                else str(exc)
            )
            raise ModelLoadError(
                f"could not load the model {model_id!r}: {why}\n"
                "Without internet access, download it on a connected machine "
                "(`hf download openai/clip-vit-base-patch32 --local-dir ./models/clip`), copy "
                "the folder here and set EMBED_MODEL to its path."
            ) from exc
        fingerprint = fingerprint_of(clip)
        clip = clip.to(torch_device)
        max_tokens = family.max_text_tokens(clip.config, tokenizer)
        root = cache_dir or onnx_export.default_cache_dir()
        flags = cpu_flags()
        threads_used = threads or torch.get_num_threads()
        needs_onnx = backend != "torch"
        providers = onnx_providers() if needs_onnx else []
        candidates = race.options(
            backend,
            precision,
            device=torch_device,
            native_bf16=has_native_bf16(flags),
            onnx_providers=providers,
        )
        if family.naflex:
            candidates = _torch_only(candidates, model_id)
        preprocessing = Preprocessing.from_processor(processor)

        def build(option: Option) -> Runtime:
            if option.runtime == "torch":
                return TorchRuntime(clip, torch_device, option.precision, threads_used,
                                    text_mask=family.text_mask, naflex=family.naflex)  # fmt: skip
            towers = onnx_export.exported(
                clip,
                cache_dir=root,
                fingerprint=fingerprint,
                precision=option.precision,
                device=torch_device,
                reduce_range=option.precision == "int8" and not has_vnni(flags),
                text_mask=family.text_mask,
            )
            return OnnxRuntime(towers.vision, towers.text, precision=option.precision,
                               device=torch_device, threads=threads_used)  # fmt: skip

        key = {
            "fingerprint": fingerprint,
            "device": str(torch_device),
            "cpu": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
            "cores": os.cpu_count(),
            "threads": threads_used,
            "torch": torch.__version__,
            "candidates": [str(c) for c in candidates],
            "probe_batch": probe_batch,
        }
        runtime, timings = race.choose(
            candidates,
            build,
            pixels=preprocessing.probe(probe_batch),
            tokenize=lambda texts: _ids(tokenize(tokenizer, texts, max_tokens, family.padding)),
            verdicts=root / "runtime",
            key=key,
        )
        log.info(
            "loaded %s (%s) on %s: %s %s (fingerprint %s)",
            model_id,
            family.name,
            torch_device,
            runtime.name,
            runtime.precision,
            fingerprint,
        )
        return cls(
            model_id=model_id,
            family=family,
            config=clip.config,
            tokenizer=tokenizer,
            preprocessing=preprocessing,
            runtime=runtime,
            device=torch_device,
            fingerprint=fingerprint,
            timings=timings,
        )

    def embed_pixels(self, pixels: npt.NDArray[np.float32]) -> Vectors:
        """(N, 3, H, W) normalized pixels -> (N, dimension) unit vectors."""
        return self.runtime.embed_pixels(pixels)

    def tokenize(self, texts: Sequence[str]) -> TokenizedTexts:
        with self._tokenizing:
            return tokenize(self._tokenizer, texts, self.max_text_tokens, self.family.padding)

    def embed_tokens(self, tokens: TokenizedTexts) -> Vectors:
        return self.runtime.embed_tokens(tokens.input_ids, tokens.attention_mask)


def _torch_only(candidates: list[Option], model_id: str) -> list[Option]:
    """A NaFlex vision tower resizes its position embeddings to each image's patch grid: an
    exported (traced) graph would keep the grid it was traced with, so only torch runs it."""
    kept = [c for c in candidates if c.runtime == "torch"]
    if not kept:
        raise ModelLoadError(
            f"EMBED_MODEL={model_id!r} is a SigLIP 2 NaFlex checkpoint, which only torch runs "
            "(an ONNX export would fix every image to one patch grid); set EMBED_BACKEND=torch "
            "or auto"
        )
    if len(kept) < len(candidates):
        log.info("ONNX Runtime left out of the race: a NaFlex tower runs on torch only")
    return kept


# A token spans at least one character, and ordinary text's about four: the first
# CHARS_PER_TOKEN x max_tokens characters give the same first max_tokens tokens, and a
# text is never tokenized whole (a 3 MB text took seconds and gigabytes to tokenize).
CHARS_PER_TOKEN = 16


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_tokens: int, padding: str = "longest"
) -> TokenizedTexts:
    budget = CHARS_PER_TOKEN * max_tokens
    cut = [text[:budget] for text in texts]
    # Untruncated lengths first: that is the only way to tell the caller what was cut.
    lengths = tokenizer(cut, truncation=False, return_attention_mask=False,
                        verbose=False)["input_ids"]  # fmt: skip
    truncated = [
        len(ids) > max_tokens or len(text) > budget
        for ids, text in zip(lengths, texts, strict=True)
    ]
    encoded = tokenizer(
        cut, padding=padding, truncation=True, max_length=max_tokens, return_tensors="np",
        return_attention_mask=True,
    )  # fmt: skip
    return TokenizedTexts(
        encoded["input_ids"].astype(np.int64, copy=False),
        encoded["attention_mask"].astype(np.int64, copy=False),
        truncated,
    )


def _ids(tokens: TokenizedTexts) -> tuple[Ids, Ids]:
    return tokens.input_ids, tokens.attention_mask
