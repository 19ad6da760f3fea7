"""Builds a CLIP with random weights into a folder, loadable with `from_pretrained`.

No weights can be downloaded here, so tests and benchmarks build one: real config,
real tokenizer files (a byte-level BPE vocabulary with no merges) and a real
processor config, saved with `save_pretrained` and loaded by path through the same
code the service uses for a hub id.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

TINY = {
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "vocab_size": 514,
        "bos_token_id": 512,
        "eos_token_id": 513,
        "pad_token_id": 513,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 16,
    },
    "projection_dim": 64,
}


def tiny_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE with the 256 byte symbols (plus end-of-word forms) and no merges."""
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)}, merges=[], model_max_length=77
    )


def build_clip(folder: Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """Writes a CLIP to folder. size "tiny" is for tests; "base" is ViT-B/32-sized."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = CLIPConfig(**TINY) if size == "tiny" else CLIPConfig()
    CLIPModel(config).eval().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    image_size = config.vision_config.image_size
    CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    ).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    import sys

    print(build_clip(Path(sys.argv[1]), size=sys.argv[2] if len(sys.argv) > 2 else "tiny"))
