"""ONNX Runtime sessions of the exported towers (onnx_export.py), on CPU or CUDA."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from embed_service.runtimes.base import Ids, RuntimeName, Vectors


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
        # A tower that reads no mask (SigLIP) was exported without that input.
        self._text_reads_mask = "attention_mask" in {i.name for i in self._text.get_inputs()}

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
        feed = {"input_ids": input_ids}
        if self._text_reads_mask:
            feed["attention_mask"] = attention_mask
        return _float32(self._text.run(None, feed)[0])


def _float32(array: Any) -> Vectors:
    return np.ascontiguousarray(array, dtype=np.float32)


def onnx_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())
