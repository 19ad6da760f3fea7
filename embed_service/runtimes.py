"""The two runtimes a loaded CLIP can run on: torch (eager) and ONNX Runtime.

Both take the same inputs (normalized pixels; token ids and attention mask as int64
numpy arrays) and return L2-normalized float32 vectors, so the engine never knows
which one it drives. The towers below are also what gets exported to ONNX, so the
exported graph computes exactly what the torch runtime does.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch

Vectors = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]
RuntimeName = Literal["torch", "onnx"]


class Runtime(Protocol):
    """Runs both towers of one CLIP in one precision."""

    @property
    def name(self) -> RuntimeName: ...

    @property
    def precision(self) -> str: ...

    def embed_pixels(self, pixels: npt.NDArray[np.float32]) -> Vectors: ...

    def embed_tokens(self, input_ids: Ids, attention_mask: Ids) -> Vectors: ...

    def set_lanes(self, lanes: int) -> None:
        """Splits the threads between `lanes` passes run at once (1: one pass on all).
        Called on each thread that runs passes, while none runs (see lanes.py)."""
        ...


class VisionTower(torch.nn.Module):
    """Pixels -> unit image vectors (the graph exported to vision.onnx)."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=pixel_values)
        return torch.nn.functional.normalize(_pooled(out).float(), dim=-1)


class TextTower(torch.nn.Module):
    """Token ids and mask -> unit text vectors (the graph exported to text.onnx)."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return torch.nn.functional.normalize(_pooled(out).float(), dim=-1)


def _pooled(out: object) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the
    # projected embedding; older versions returned the tensor itself.
    tensor = getattr(out, "pooler_output", out)
    assert isinstance(tensor, torch.Tensor)
    return tensor


class TorchRuntime:
    """Eager torch under inference_mode: bf16 on CPU as a bf16 copy of the weights, fp16 on
    CUDA by autocast, int8 by dynamic quantization."""

    name: RuntimeName = "torch"

    def __init__(self, clip: Any, device: torch.device, precision: str, threads: int = 0) -> None:
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
        self._vision = VisionTower(clip).eval()
        self._text = TextTower(clip).eval()

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
    """A copy of the model with int8 dynamic-quantized linear layers."""
    with warnings.catch_warnings():
        # torch points users of eager dynamic quantization at torchao; it still works and
        # needs no extra package, which torchao would.
        warnings.simplefilter("ignore")
        quantize = cast(Any, torch.ao.quantization.quantize_dynamic)
        return quantize(clip, {torch.nn.Linear}, dtype=torch.qint8)


class OnnxRuntime:
    """Two ONNX Runtime sessions (vision.onnx, text.onnx) on the CPU or CUDA provider."""

    name: RuntimeName = "onnx"

    def __init__(self, vision: Path, text: Path, *, precision: str, device: torch.device,
                 threads: int) -> None:  # fmt: skip
        self.precision = precision
        self._paths = (str(vision), str(text))
        self._threads = threads
        self._providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            self._providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        # Sessions by intra-op threads: ONNX Runtime fixes them per session, so passes
        # side by side (lanes) run on sessions of their own, built once.
        self._sessions: dict[int, tuple[Any, Any]] = {}
        self._opening = threading.Lock()  # every lane's thread calls set_lanes at once
        self._vision, self._text = self._open(threads)
        self._input_type = np.float16 if precision == "fp16" else np.float32

    def _open(self, threads: int) -> tuple[Any, Any]:
        import onnxruntime as ort

        with self._opening:
            if threads in self._sessions:
                return self._sessions[threads]
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Idle intra-op threads spin by default, which takes the cores image decoding
            # needs between two forward passes.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            vision, text = (
                ort.InferenceSession(path, options, providers=self._providers)
                for path in self._paths
            )
            self._sessions[threads] = (vision, text)
            return vision, text

    def set_lanes(self, lanes: int) -> None:
        if self._providers[0] == "CPUExecutionProvider":
            self._vision, self._text = self._open(max(1, self._threads // lanes))

    def embed_pixels(self, pixels: npt.NDArray[np.float32]) -> Vectors:
        feed = {"pixel_values": pixels.astype(self._input_type, copy=False)}
        return _float32(self._vision.run(None, feed)[0])

    def embed_tokens(self, input_ids: Ids, attention_mask: Ids) -> Vectors:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        return _float32(self._text.run(None, feed)[0])


def _float32(array: Any) -> Vectors:
    return np.ascontiguousarray(array, dtype=np.float32)


def onnx_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())
