"""The model families embed_service embeds, each as its authors' own code does: the
transformers class that loads it, how its texts are tokenized, and its sizes.

A family is named by the checkpoint's `model_type`. Every one listed here offers
`get_image_features` and `get_text_features` over token ids and a square image of a fixed
size, or (SigLIP 2 NaFlex) a budget of patches at the image's own aspect ratio; its image
processor (read from the checkpoint, PIL backend) says how the image is resized, cropped
or not, and normalized. Anything else is refused at start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from embed_service.errors import ModelLoadError


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    title: str
    model_class: str
    # "max_length": texts padded to the full context, as the family was trained.
    padding: Literal["longest", "max_length"]
    # False: the text tower reads no attention mask (SigLIP: trained without one).
    text_mask: bool
    dimension: Callable[[Any], int]
    # Positions the text tower has for tokens (RoBERTa-style towers keep two for padding).
    text_positions: Callable[[Any], int] = lambda config: int(
        config.text_config.max_position_embeddings
    )
    # Images as a budget of patches at their own aspect ratio (NaFlex), not a fixed square.
    naflex: bool = False

    def max_text_tokens(self, config: Any, tokenizer: Any) -> int:
        """What the tokenizer may produce and the tower can read, the smaller of the two."""
        limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
        positions = self.text_positions(config)
        return min(limit, positions) if 0 < limit < 1_000_000 else positions


def _projected(config: Any) -> int:
    return int(config.projection_dim)


def _roberta_positions(config: Any) -> int:
    # Position ids start after the padding index: 514 positions hold 512 tokens.
    text = config.text_config
    return int(text.max_position_embeddings) - int(text.pad_token_id or 0) - 1


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "clip",
            "CLIP (OpenAI, LAION/OpenCLIP exports, MetaCLIP) in transformers format",
            "CLIPModel",
            padding="longest",
            text_mask=True,
            dimension=_projected,
        ),
        Family(
            "siglip",
            "SigLIP, and SigLIP 2 at a fixed resolution (google/siglip-*, siglip2-*-224...)",
            "SiglipModel",
            padding="max_length",
            text_mask=False,
            dimension=lambda config: int(config.vision_config.hidden_size),
        ),
        Family(
            "siglip2",
            "SigLIP 2 NaFlex (google/siglip2-*-naflex: each image at its own aspect ratio)",
            "Siglip2Model",
            padding="max_length",
            text_mask=False,
            dimension=lambda config: int(config.vision_config.hidden_size),
            naflex=True,
        ),
        Family(
            "metaclip_2",
            "MetaCLIP 2 (facebook/metaclip-2-worldwide-*, multilingual)",
            "MetaClip2Model",
            padding="longest",
            text_mask=True,
            dimension=_projected,
        ),
        Family(
            "chinese_clip",
            "Chinese CLIP (OFA-Sys/chinese-clip-*)",
            "ChineseCLIPModel",
            padding="longest",
            text_mask=True,
            dimension=_projected,
        ),
        Family(
            "altclip",
            "AltCLIP (BAAI/AltCLIP, multilingual)",
            "AltCLIPModel",
            padding="longest",
            text_mask=True,
            dimension=_projected,
            text_positions=_roberta_positions,
        ),
    )
}

# Families transformers knows that this version does not embed, and why.
REFUSED = {
    "align": "ALIGN's EfficientNet processor (its own rescale offset) is not supported",
}


def family_of(config: Any, model_id: str) -> Family:
    """The family of a checkpoint's config; ModelLoadError naming what was found and what
    is supported when it is none of them. Refused before the weights load: transformers
    would load, say, a MetaCLIP 2 checkpoint into CLIPModel with a warning, and its vectors
    would be wrong."""
    found = str(getattr(config, "model_type", "") or "unknown")
    if found in FAMILIES:
        return FAMILIES[found]
    architectures = ", ".join(getattr(config, "architectures", None) or []) or "none named"
    why = f" ({REFUSED[found]})" if found in REFUSED else ""
    supported = "; ".join(f"{f.name}: {f.title}" for f in FAMILIES.values())
    raise ModelLoadError(
        f"EMBED_MODEL={model_id!r} is a {found!r} checkpoint (architectures: {architectures})"
        f"{why}. embed_service embeds these families: {supported}. Point EMBED_MODEL at such "
        "a checkpoint."
    )
