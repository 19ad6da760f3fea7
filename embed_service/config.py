"""Settings of embed_service, read once from the environment and `.env`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
Backend = Literal["auto", "torch", "onnx"]


class EmbedSettings(BaseSettings):
    """Every knob of embed_service; each field is the variable EMBED_<NAME>."""

    model_config = SettingsConfigDict(
        env_prefix="EMBED_", env_file=".env", extra="ignore", frozen=True
    )

    model: str = Field(
        default="openai/clip-vit-base-patch32",
        description=(
            "A Hugging Face hub id or a local directory saved with save_pretrained, of a "
            "supported family: clip, siglip, siglip2 (NaFlex), metaclip_2, chinese_clip, altclip."
        ),
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    backend: Backend = Field(
        default="auto",
        description=(
            "torch, onnx (ONNX Runtime on towers exported once into EMBED_CACHE_DIR), or auto: "
            "at start-up, race the runtimes and precisions this machine has on a probe batch "
            "and keep the fastest within cosine 0.999 of torch fp32 (the verdict is cached)."
        ),
    )
    precision: Precision = Field(
        default="auto",
        description=(
            "auto: with EMBED_BACKEND=auto, every precision that keeps fp32's vectors (never "
            "int8); with torch, fp16 on CUDA, bf16 on CPUs with AVX512-BF16/AMX, else fp32; "
            "with onnx, fp16 on CUDA, else fp32. int8: dynamic int8 linear layers on CPU, "
            "opt-in: vectors differ slightly from fp32."
        ),
    )
    cache_dir: Path | None = Field(
        default=None,
        description=(
            "Exported ONNX towers and runtime verdicts; default $XDG_CACHE_HOME/imagesearch "
            "(~/.cache/imagesearch)."
        ),
    )
    addr: str = Field(default="127.0.0.1:50051", description="host:port to listen on.")
    max_batch_size: int = Field(default=64, ge=1, description="Most items in one request.")
    model_batch_size: int = Field(default=16, ge=1, description="Most items in one forward pass.")
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description=(
            "How long a forward pass waits for more items to join it. 0: it takes what is "
            "queued when the model frees up, which under load is a full batch (the queue "
            "fills during the pass before) and at rest adds no latency to a lone query."
        ),
    )
    queue_size: int = Field(
        default=256, ge=1, description="Items admitted at once; past it, RESOURCE_EXHAUSTED."
    )
    threads: int = Field(default=0, ge=0, description="torch threads; 0 means one per core.")
    lanes: int = Field(
        default=0,
        ge=0,
        description=(
            "Forward passes run side by side under load, splitting the threads between them "
            "(a pass with nothing waiting behind it still gets every thread). 0: one per "
            "thread on CPU, 1 on CUDA. 1: one pass at a time, as before."
        ),
    )
    decode_workers: int = Field(default=0, ge=0, description="Decode threads; 0: one per core.")
    max_image_pixels: int = Field(
        default=50_000_000, ge=1, description="Larger images are refused before decoding."
    )
    max_message_mb: int = Field(default=32, ge=1, description="Largest request accepted, MiB.")
    max_concurrent_rpcs: int = Field(
        default=16,
        ge=1,
        description=(
            "RPCs served at once; the next gets RESOURCE_EXHAUSTED before its message is read. "
            "Requests in flight hold at most about 2 x this x max_message_mb (1 GiB by default)."
        ),
    )
    max_health_watchers: int = Field(
        default=32,
        ge=1,
        description=(
            "grpc.health.v1 Watch streams open at once (health needs no token); past it, "
            "RESOURCE_EXHAUSTED. They never take a place of EMBED_MAX_CONCURRENT_RPCS."
        ),
    )
    grace_s: float = Field(default=10.0, ge=0, description="Shutdown grace for in-flight calls.")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    metrics_addr: str | None = Field(
        default=None, description="host:port to serve Prometheus metrics at /metrics."
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate: serve TLS only.")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    tls_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle: also require client certificates it signed."
    )
    tokens: SecretStr | None = Field(
        default=None,
        description="Comma-separated bearer tokens; set: every RPC but health needs one.",
    )
    tokens_file: Path | None = Field(default=None, description="Bearer tokens, one per line.")

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> EmbedSettings:
        if self.queue_size < self.max_batch_size:
            raise ValueError(
                f"EMBED_QUEUE_SIZE ({self.queue_size}) must be at least "
                f"EMBED_MAX_BATCH_SIZE ({self.max_batch_size})"
            )
        return self

    @property
    def torch_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)

    def lanes_for(self, device_type: str, runtime: str, precision: str) -> int:
        """EMBED_LANES resolved for what the model runs on.

        auto leaves ONNX Runtime fp32 at one lane: its narrow sessions hold another copy
        of the weights (+593 MiB for ViT-B/32) for 0-3 % more images/s (AMX Xeon), where
        torch costs nothing and int8 sessions +222 MiB for 15 %."""
        if self.lanes:
            return min(self.lanes, self.torch_threads)
        if device_type != "cpu" or (runtime == "onnx" and precision == "fp32"):
            return 1
        return self.torch_threads

    @property
    def decode_threads(self) -> int:
        return self.decode_workers or (os.cpu_count() or 1)
