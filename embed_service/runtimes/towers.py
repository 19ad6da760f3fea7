"""A model's two towers as modules that return unit vectors: what the torch runtime runs and
what gets exported to ONNX, so the exported graph computes exactly what torch does."""

from __future__ import annotations

from typing import Any

import torch


class VisionTower(torch.nn.Module):
    """Pixels -> unit image vectors (the graph exported to vision.onnx)."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=pixel_values)
        return torch.nn.functional.normalize(_pooled(out).float(), dim=-1)


class TextTower(torch.nn.Module):
    """Token ids and mask -> unit text vectors (the graph exported to text.onnx). Without
    `mask`, the mask is not passed on: SigLIP was trained without one, on padded texts."""

    def __init__(self, clip: Any, *, mask: bool = True) -> None:
        super().__init__()
        self.clip = clip
        self.mask = mask

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.mask:
            out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        else:
            out = self.clip.get_text_features(input_ids=input_ids)
        return torch.nn.functional.normalize(_pooled(out).float(), dim=-1)


def _pooled(out: object) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the
    # projected embedding; older versions returned the tensor itself.
    tensor = getattr(out, "pooler_output", out)
    assert isinstance(tensor, torch.Tensor)
    return tensor
