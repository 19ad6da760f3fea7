"""The CLIP model runtime: load, then the forward passes (the "core" step).

Loading goes through transformers' `from_pretrained`, from a hub id or a local
directory. Forward passes run under `torch.inference_mode()` in the precision the
settings pick, and return L2-normalized float32 numpy arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from embed_service import hub
from embed_service.config import Precision
from embed_service.errors import ModelLoadError
from embed_service.images import Preprocessing

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TokenizedTexts:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: list[bool]


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"EMBED_DEVICE={requested} but no CUDA device is available")
    return device


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_native_bf16(flags: frozenset[str]) -> bool:
    """True on CPUs where bf16 matmuls are fast (AVX512-BF16 or AMX); emulated bf16 is slow."""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(
    requested: Precision, device: torch.device, flags: frozenset[str] | None = None
) -> Precision:
    """The precision to run: `auto` is fp16 on CUDA, bf16 where the CPU has it natively,
    fp32 otherwise. `flags` defaults to this machine's."""
    if requested == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if has_native_bf16(cpu_flags() if flags is None else flags) else "fp32"
    if requested == "int8" and device.type != "cpu":
        raise ModelLoadError("EMBED_PRECISION=int8 runs on CPU only; use fp16 on CUDA")
    if requested == "fp16" and device.type == "cpu":
        raise ModelLoadError("EMBED_PRECISION=fp16 needs CUDA; use bf16 or fp32 on CPU")
    return requested


def is_local_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).expanduser().exists()


def fingerprint_of(module: torch.nn.Module) -> str:
    """Digest of every weight's name, shape, dtype and bytes: equal digests embed alike."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


class ClipModel:
    """One loaded CLIP: its preprocessing facts and its two towers."""

    def __init__(
        self,
        *,
        model_id: str,
        model: Any,
        tokenizer: Any,
        preprocessing: Preprocessing,
        device: torch.device,
        precision: Precision,
        fingerprint: str,
    ) -> None:
        self.model_id = model_id
        self._model = model
        self._tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.device = device
        self.precision = precision
        self.fingerprint = fingerprint
        config = model.config
        self.dimension = int(config.projection_dim)
        self.image_size = int(config.vision_config.image_size)
        self.max_text_tokens = int(config.text_config.max_position_embeddings)

    @classmethod
    def load(
        cls, model_id: str, *, device: str = "auto", precision: Precision = "auto", threads: int = 0
    ) -> ClipModel:
        """Loads model, tokenizer and processor config; ModelLoadError says how to fix it."""
        from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

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
        chosen = resolve_precision(precision, torch_device)
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
        try:
            model = CLIPModel.from_pretrained(source, **cache_only).eval()
            tokenizer = AutoTokenizer.from_pretrained(source, **cache_only)
            processor = CLIPImageProcessorPil.from_pretrained(source, **cache_only)
        except (OSError, ValueError) as exc:
            why = (
                f"the model hub at {hub.endpoint()} cannot be reached ({unreachable}) and no "
                "copy of the model is cached here"
                if unreachable
                else str(exc)
            )
            raise ModelLoadError(
                f"could not load the CLIP model {model_id!r}: {why}\n"
                "Without internet access, download it on a connected machine "
                "(`hf download openai/clip-vit-base-patch32 --local-dir ./models/clip`), copy "
                "the folder here and set EMBED_MODEL to its path."
            ) from exc
        fingerprint = fingerprint_of(model)
        model = model.to(torch_device)
        if chosen == "int8":
            model = _quantize_int8(model)
        preprocessing = Preprocessing.from_processor(processor)
        log.info(
            "loaded %s on %s in %s (fingerprint %s)", model_id, torch_device, chosen, fingerprint
        )
        return cls(
            model_id=model_id,
            model=model,
            tokenizer=tokenizer,
            preprocessing=preprocessing,
            device=torch_device,
            precision=chosen,
            fingerprint=fingerprint,
        )

    @contextlib.contextmanager
    def _forward(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    yield
            elif self.precision == "fp16":
                with torch.autocast(self.device.type, dtype=torch.float16):
                    yield
            else:
                yield

    def embed_pixels(self, pixels: npt.NDArray[np.float32]) -> Vectors:
        """(N, 3, H, W) normalized pixels -> (N, dimension) unit vectors."""
        batch = torch.from_numpy(pixels).to(self.device, non_blocking=True)
        with self._forward():
            out = self._model.get_image_features(pixel_values=batch)
            return _normalized(_pooled(out))

    def tokenize(self, texts: Sequence[str]) -> TokenizedTexts:
        # Untruncated lengths first: that is the only way to tell the caller what was cut.
        lengths = self._tokenizer(
            list(texts), truncation=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        truncated = [len(ids) > self.max_text_tokens for ids in lengths]
        encoded = self._tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        return TokenizedTexts(encoded["input_ids"], encoded["attention_mask"], truncated)

    def embed_tokens(self, tokens: TokenizedTexts) -> Vectors:
        with self._forward():
            out = self._model.get_text_features(
                input_ids=tokens.input_ids.to(self.device),
                attention_mask=tokens.attention_mask.to(self.device),
            )
            return _normalized(_pooled(out))


def _pooled(out: object) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the
    # projected embedding; older versions returned the tensor itself.
    tensor = getattr(out, "pooler_output", out)
    assert isinstance(tensor, torch.Tensor)
    return tensor


def _normalized(tensor: torch.Tensor) -> Vectors:
    vectors = torch.nn.functional.normalize(tensor.float(), dim=-1)
    return vectors.cpu().numpy().astype(np.float32, copy=False)


def _quantize_int8(model: Any) -> Any:
    with warnings.catch_warnings():
        # torch points users of eager dynamic quantization at torchao; it still works and
        # needs no extra package, which torchao would.
        warnings.simplefilter("ignore")
        quantize = cast(Any, torch.ao.quantization.quantize_dynamic)
        return quantize(model, {torch.nn.Linear}, dtype=torch.qint8)
