"""What every runtime offers the engine: one loaded model's two towers in one precision.

Runtimes take the same inputs (normalized pixels; token ids and attention mask as int64
numpy arrays) and return L2-normalized float32 vectors, so the engine never knows which
one it drives.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

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
