"""Eager torch under inference_mode, on CPU or CUDA, in fp32, bf16, fp16 or int8."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from embed_service.runtimes.base import Ids, RuntimeName, Vectors
from embed_service.runtimes.towers import TextTower, VisionTower


class TorchRuntime:
    """Eager torch under inference_mode: bf16 on CPU as a bf16 copy of the weights, fp16 on
    CUDA by autocast, int8 by dynamic quantization."""

    name: RuntimeName = "torch"

    def __init__(
        self,
        clip: Any,
        device: torch.device,
        precision: str,
        threads: int = 0,
        *,
        text_mask: bool = True,
        naflex: bool = False,
    ) -> None:
        self.precision = precision
        self.device = device
        self._threads = threads or torch.get_num_threads()
        self._pixels_dtype = torch.float32
        if precision == "int8":
            clip = quantize_int8(clip)
        elif precision == "bf16" and device.type == "cpu":
            # Autocast casts every fp32 weight to bf16 again in every forward pass, nearly
            # half of a lone image's pass: the weights are kept in bf16 instead.
            clip = copy.deepcopy(clip).to(torch.bfloat16)
            self._pixels_dtype = torch.bfloat16
        # Whatever runs in half precision without a cast copy: fp16 and bf16 on CUDA.
        self._autocast = precision == "fp16" or (precision == "bf16" and device.type != "cpu")
        self._vision = VisionTower(clip, naflex=naflex).eval()
        self._text = TextTower(clip, mask=text_mask).eval()

    @contextlib.contextmanager
    def _forward(self) -> Iterator[None]:
        with torch.inference_mode():
            if self._autocast:
                dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
                with torch.autocast(self.device.type, dtype=dtype):
                    yield
            else:
                yield

    def set_lanes(self, lanes: int) -> None:
        if self.device.type == "cpu":
            # Per calling thread for OpenMP, process-wide for MKL: hence on every lane.
            torch.set_num_threads(max(1, self._threads // lanes))

    def embed_pixels(self, pixels: npt.NDArray[np.float32]) -> Vectors:
        batch = torch.from_numpy(pixels).to(self.device, self._pixels_dtype, non_blocking=True)
        with self._forward():
            return _numpy(self._vision(batch))

    def embed_tokens(self, input_ids: Ids, attention_mask: Ids) -> Vectors:
        with self._forward():
            return _numpy(
                self._text(
                    torch.from_numpy(input_ids).to(self.device),
                    torch.from_numpy(attention_mask).to(self.device),
                )
            )


def _numpy(vectors: torch.Tensor) -> Vectors:
    return vectors.float().cpu().numpy().astype(np.float32, copy=False)


def quantize_int8(clip: Any) -> Any:
    """A copy of the model with int8 dynamic-quantized linear layers, but for a patch
    embedding that is a linear layer (SigLIP 2 NaFlex): the model reads its weight's dtype,
    which a quantized layer no longer has."""
    layers = {
        name: torch.ao.quantization.default_dynamic_qconfig
        for name, module in clip.named_modules()
        # Exactly Linear, as {nn.Linear} would pick: not MultiheadAttention's out_proj.
        if type(module) is torch.nn.Linear and not name.endswith("patch_embedding")
    }
    with warnings.catch_warnings():
        # torch points users of eager dynamic quantization at torchao; it still works and
        # needs no extra package, which torchao would.
        warnings.simplefilter("ignore")
        quantize = cast(Any, torch.ao.quantization.quantize_dynamic)
        return quantize(clip, layers, dtype=torch.qint8)
