"""Tiny random models of every family embed_service embeds, each with its family's config
and model class, its real image processor class (PIL backend) and a real tokenizer of its
kind: SentencePiece ones trained here on a few multilingual lines, a WordPiece vocabulary
for Chinese CLIP. Saved with `save_pretrained` and loaded by path, as a hub id would be.
"""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm
import torch
import transformers

from tests.support.tiny_clip import build_clip

FAMILIES = ("clip", "siglip", "siglip2", "metaclip_2", "chinese_clip", "altclip")
IMAGE_SIZE = 64
LINES = [
    "a photo of a cat on a sofa",
    "a dog running on the beach at sunset",
    "ein Foto einer Katze auf dem Sofa",
    "une photo d'un chat sur un canapé",
    "沙发上的一只猫的照片",
    "ソファの上の猫の写真",
    "фотография кошки на диване",
    "صورة قطة على الأريكة",
]
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2}  # fmt: skip
VISION = {**SMALL, "image_size": IMAGE_SIZE, "patch_size": 16}


def sentencepiece_model(vocab_size: int = 400) -> tuple[bytes, spm.SentencePieceProcessor]:
    """A unigram SentencePiece model trained on LINES, bytes falling back for the rest."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(LINES * 10), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", byte_fallback=True, character_coverage=1.0, unk_id=0,
        bos_id=1, eos_id=2, pad_id=3, num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )  # fmt: skip
    return model.getvalue(), spm.SentencePieceProcessor(model_proto=model.getvalue())


def build_family(folder: Path, family: str, *, seed: int = 0, size: str = "tiny") -> Path:
    """Writes a model of `family` to folder and returns it: "tiny" for tests, "base" at a
    base checkpoint's size for benchmarks (CLIP ViT-B/32, SigLIP B/16 at 224)."""
    if family == "clip":
        return build_clip(folder, seed=seed, size=size)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if size == "base":
        if family not in ("siglip", "siglip2"):
            raise ValueError(f"no base size of {family} is built here")
        (_siglip if family == "siglip" else _siglip2)(folder, base=True)
        return folder
    builders = {"siglip": _siglip, "siglip2": _siglip2, "metaclip_2": _metaclip_2,
                "chinese_clip": _chinese_clip, "altclip": _altclip}  # fmt: skip
    builders[family](folder)
    return folder


def _siglip(folder: Path, *, base: bool = False) -> None:
    proto, processor = sentencepiece_model()
    if base:  # google/siglip-base-patch16-224: transformers' defaults, its 32k vocabulary
        config = transformers.SiglipConfig(text_config={"vocab_size": 32_000})
    else:
        text = {**SMALL, "vocab_size": processor.get_piece_size(), "max_position_embeddings": 64}
        config = transformers.SiglipConfig(text_config=text, vision_config=VISION)
    image_size = config.vision_config.image_size
    transformers.SiglipModel(config).eval().save_pretrained(folder)
    (folder / "spiece.model").write_bytes(proto)
    transformers.SiglipTokenizer(
        vocab_file=str(folder / "spiece.model"), model_max_length=64
    ).save_pretrained(folder)
    transformers.SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)


def _siglip2(folder: Path, *, base: bool = False) -> None:
    """NaFlex: a budget of 16 patches of 8 px at each image's aspect ratio; base: 256 of
    16 px, as google/siglip2-base-patch16-naflex (transformers' defaults)."""
    proto, processor = sentencepiece_model()
    if base:
        config = transformers.Siglip2Config(text_config={"vocab_size": 32_000})
    else:
        text = {**SMALL, "vocab_size": processor.get_piece_size(), "max_position_embeddings": 64}
        vision = {**SMALL, "num_patches": 16, "patch_size": 8}
        config = transformers.Siglip2Config(text_config=text, vision_config=vision)
    patch, budget = config.vision_config.patch_size, config.vision_config.num_patches
    transformers.Siglip2Model(config).eval().save_pretrained(folder)
    (folder / "spiece.model").write_bytes(proto)
    transformers.SiglipTokenizer(
        vocab_file=str(folder / "spiece.model"), model_max_length=64
    ).save_pretrained(folder)
    transformers.Siglip2ImageProcessorPil(patch_size=patch, max_num_patches=budget).save_pretrained(
        folder
    )


def _xlm_roberta(max_length: int) -> transformers.XLMRobertaTokenizer:
    """An XLM-R tokenizer (SentencePiece unigram) over a vocabulary trained on LINES."""
    _, processor = sentencepiece_model()
    pieces = [
        (processor.id_to_piece(i), processor.get_score(i))
        for i in range(processor.get_piece_size())
        if not (processor.is_control(i) or processor.is_unknown(i))
    ]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces,
             ("<mask>", 0.0)]  # fmt: skip
    return transformers.XLMRobertaTokenizer(vocab=vocab, model_max_length=max_length)


def _metaclip_2(folder: Path) -> None:
    tokenizer = _xlm_roberta(77)
    text = {**SMALL, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
            "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2}  # fmt: skip
    config = transformers.MetaClip2Config(text_config=text, vision_config=VISION, projection_dim=48)
    transformers.MetaClip2Model(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # MetaCLIP 2's processor squashes to a square rather than cropping one.
    transformers.CLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False
    ).save_pretrained(folder)


def _chinese_clip(folder: Path) -> None:
    characters = sorted({c for line in LINES for c in line if not c.isspace()})
    words = sorted({w.lower() for line in LINES for w in line.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters, *words]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt"),
                                           model_max_length=52)  # fmt: skip
    text = {**SMALL, "vocab_size": len(tokenizer), "max_position_embeddings": 52}
    config = transformers.ChineseCLIPConfig(
        text_config=text, vision_config=VISION, projection_dim=40
    )
    transformers.ChineseCLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformers.ChineseCLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    ).save_pretrained(folder)


def _altclip(folder: Path) -> None:
    tokenizer = _xlm_roberta(77)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "vocab_size": len(tokenizer), "project_dim": 24,
            "max_position_embeddings": 80, "pad_token_id": 1}  # fmt: skip
    config = transformers.AltCLIPConfig(text_config=text, vision_config=VISION, projection_dim=24)
    transformers.AltCLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformers.CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(folder)
