"""Settings of search_service, read once from the environment and `.env`.

Variable names are the ones both seeds and ARCHITECTURE.md use (SEARCH_ADDR,
EMBED_TARGET, DATA_DIR, PINECONE_*), so a seed's `.env` works unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

StoreKind = Literal["local", "pinecone"]


def _env(name: str) -> AliasChoices:
    # Accept the field name too, so tests can build settings with model_validate.
    return AliasChoices(name, name.lower())


class SearchSettings(BaseSettings):
    """Every knob of search_service; each field is the variable named in its alias."""

    model_config = SettingsConfigDict(
        env_file=".env",
        # `VECTOR_STORE=` in a .env means unset, not an invalid empty value.
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    addr: str = Field(
        default="127.0.0.1:50052", validation_alias=_env("SEARCH_ADDR"),
        description="host:port to listen on.",
    )  # fmt: skip
    embed_target: str = Field(
        default="127.0.0.1:50051", validation_alias=_env("EMBED_TARGET"),
        description="Where embed_service listens (a gRPC target).",
    )  # fmt: skip
    embed_timeout_s: float = Field(
        default=30.0, gt=0, validation_alias=_env("SEARCH_EMBED_TIMEOUT_S"),
        description="Deadline of each call to embed_service, retries included.",
    )  # fmt: skip
    vector_store: StoreKind | None = Field(
        default=None, validation_alias=_env("VECTOR_STORE"),
        description="local or pinecone; unset: pinecone when PINECONE_API_KEY is set.",
    )  # fmt: skip
    data_dir: Path = Field(
        default=Path(".imagesearch"), validation_alias=_env("DATA_DIR"),
        description="Where the local store keeps its files.",
    )  # fmt: skip
    index_threshold: int = Field(
        default=10_000, ge=1, validation_alias=_env("SEARCH_INDEX_THRESHOLD"),
        description="Unindexed vectors that start a background HNSW build (local store).",
    )  # fmt: skip
    index_max_unindexed: int = Field(
        # Every query scans the unindexed tail in float32: the bound keeps queries fast
        # during a bulk UpsertVectors (docs/local-store.md); image ingest never reaches it.
        default=15_000, ge=0, validation_alias=_env("SEARCH_INDEX_MAX_UNINDEXED"),
        description=(
            "Local store: while a build runs and this many vectors are unindexed, upserts wait "
            "for it (queries scan unindexed vectors one by one). 0: never wait."
        ),
    )  # fmt: skip
    vectors_memory: Literal["pinned", "cold", "cached"] = Field(
        # Pinned keeps cold's single copy and cached's speed on hosts that page out idle
        # memory; cached costs a copy in the builder and two in a swap (docs/local-store.md).
        default="pinned", validation_alias=_env("SEARCH_VECTORS_MEMORY"),
        description=(
            "Local store: the float32 vectors (read to rescore a query's candidates) are "
            "memory-mapped and locked in memory by the service, not by the index builder "
            "(pinned); mapped and read from disk as queries touch them (cold); or read into "
            "memory at every load, the builder's included (cached). cached applies to "
            "segments built from then on."
        ),
    )  # fmt: skip
    pinecone_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("PINECONE_API_KEY"),
        description="Your Pinecone project's API key; setting it selects Pinecone.",
    )  # fmt: skip
    pinecone_index: str = Field(
        default="image-search", validation_alias=_env("PINECONE_INDEX"),
        description="The Pinecone index; created (serverless, cosine) if missing.",
    )  # fmt: skip
    pinecone_cloud: str = Field(
        default="aws", validation_alias=_env("PINECONE_CLOUD"),
        description="The cloud a new Pinecone index is created in.",
    )  # fmt: skip
    pinecone_region: str = Field(
        default="us-east-1", validation_alias=_env("PINECONE_REGION"),
        description="The region a new Pinecone index is created in.",
    )  # fmt: skip
    pinecone_host: str | None = Field(
        default=None, validation_alias=_env("PINECONE_HOST"),
        description="Control-plane URL; unset means Pinecone's own.",
    )  # fmt: skip
    pinecone_ready_timeout_s: float = Field(
        default=300.0, gt=0, validation_alias=_env("PINECONE_READY_TIMEOUT_S"),
        description="How long to wait for a new Pinecone index to become ready.",
    )  # fmt: skip
    max_message_mb: int = Field(
        default=16, ge=1, validation_alias=_env("SEARCH_MAX_MESSAGE_MB"),
        description="Largest request accepted, MiB.",
    )  # fmt: skip
    max_concurrent_rpcs: int = Field(
        default=16, ge=1, validation_alias=_env("SEARCH_MAX_CONCURRENT_RPCS"),
        description=(
            "RPCs served at once; the next gets RESOURCE_EXHAUSTED before its message is read. "
            "Image calls in flight hold at most about 6 x this x max_message_mb (1.5 GiB by "
            "default): the request, its decoded copy and the copy forwarded to embed_service."
        ),
    )  # fmt: skip
    max_health_watchers: int = Field(
        default=32, ge=1, validation_alias=_env("SEARCH_MAX_HEALTH_WATCHERS"),
        description=(
            "grpc.health.v1 Watch streams open at once (health needs no token); past it, "
            "RESOURCE_EXHAUSTED. They never take a place of SEARCH_MAX_CONCURRENT_RPCS."
        ),
    )  # fmt: skip
    stream_idle_s: float = Field(
        default=60.0, gt=0, validation_alias=_env("SEARCH_STREAM_IDLE_S"),
        description=(
            "A client stream (IngestImages) that sends nothing this long ends "
            "DEADLINE_EXCEEDED, freeing its place."
        ),
    )  # fmt: skip
    grace_s: float = Field(
        default=10.0, ge=0, validation_alias=_env("SEARCH_GRACE_S"),
        description="Shutdown grace for in-flight calls.",
    )  # fmt: skip
    log_level: str = Field(
        default="INFO", validation_alias=_env("SEARCH_LOG_LEVEL"),
        description="DEBUG, INFO, WARNING or ERROR.",
    )  # fmt: skip
    metrics_addr: str | None = Field(
        default=None, validation_alias=_env("SEARCH_METRICS_ADDR"),
        description="host:port to serve Prometheus metrics at /metrics.",
    )  # fmt: skip
    # TLS and tokens of search_service's own port, and of its channel to embed_service.
    tls_cert: Path | None = Field(
        default=None, validation_alias=_env("SEARCH_TLS_CERT"),
        description="PEM certificate: serve TLS only.",
    )  # fmt: skip
    tls_key: Path | None = Field(
        default=None, validation_alias=_env("SEARCH_TLS_KEY"),
        description="PEM private key of SEARCH_TLS_CERT.",
    )  # fmt: skip
    tls_client_ca: Path | None = Field(
        default=None, validation_alias=_env("SEARCH_TLS_CLIENT_CA"),
        description="PEM CA bundle: also require client certificates it signed (mutual TLS).",
    )  # fmt: skip
    tokens: SecretStr | None = Field(
        default=None, validation_alias=_env("SEARCH_TOKENS"),
        description=(
            "Comma-separated bearer tokens; set, every RPC but health needs one. Set but "
            "holding none: the service stops (exit 2), it never means no auth."
        ),
    )  # fmt: skip
    tokens_file: Path | None = Field(
        default=None, validation_alias=_env("SEARCH_TOKENS_FILE"),
        description="Bearer tokens, one per line (as SEARCH_TOKENS).",
    )  # fmt: skip
    read_tokens: SecretStr | None = Field(
        default=None, validation_alias=_env("SEARCH_READ_TOKENS"),
        description=(
            "Tokens that may only read: Query, Fetch, ListRecords, DescribeStats, "
            "FindDuplicates and server reflection."
        ),
    )  # fmt: skip
    embed_target_authority: str | None = Field(
        default=None, validation_alias=_env("EMBED_TARGET_AUTHORITY"),
        description=(
            "The name TLS verifies embed_service's certificate against (and the :authority "
            "sent). Unset: the target's own host, also for an ipv4:/ipv6: list of addresses "
            "on one host; set it where the addresses differ (a DNS name behind several IPs)."
        ),
    )  # fmt: skip
    embed_target_ca: Path | None = Field(
        default=None, validation_alias=_env("EMBED_TARGET_CA"),
        description="Dial embed_service over TLS, verifying it with this PEM CA.",
    )  # fmt: skip
    embed_target_cert: Path | None = Field(
        default=None, validation_alias=_env("EMBED_TARGET_CERT"),
        description="The client certificate search_service presents to embed_service (mTLS).",
    )  # fmt: skip
    embed_target_key: Path | None = Field(
        default=None, validation_alias=_env("EMBED_TARGET_KEY"),
        description="The private key of EMBED_TARGET_CERT.",
    )  # fmt: skip
    embed_token: SecretStr | None = Field(
        default=None, validation_alias=_env("EMBED_TOKEN"),
        description="The bearer token search_service sends to embed_service.",
    )  # fmt: skip

    @property
    def store_kind(self) -> StoreKind:
        if self.vector_store is not None:
            return self.vector_store
        return "pinecone" if self.pinecone_api_key else "local"
