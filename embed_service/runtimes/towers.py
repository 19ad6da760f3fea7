"""A model's two towers as modules that return unit vectors: what the torch runtime runs and
what gets exported to ONNX, so the exported graph computes exactly what torch does."""

from __future__ import annotations

from typing import Any

import torch


class VisionTower(torch.nn.Module):
    """Pixels -> unit image vectors (the graph exported to vision.onnx). With `naflex`, each
    input is images.to_patches' packing: row 0 the patch grid, then the patches."""

    def __init__(self, clip: Any, *, naflex: bool = False) -> None:
        super().__init__()
        self.clip = clip
        self.naflex = naflex

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.naflex:
            grid = pixel_values[:, 0, :2].round().long()
            patches = pixel_values[:, 1:]
            used = torch.arange(patches.shape[1], device=patches.device)[None, :]
            mask = (used < (grid[:, 0] * grid[:, 1])[:, None]).long()
            out = self.clip.get_image_features(
                pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=grid
            )
        else:
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
