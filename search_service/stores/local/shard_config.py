"""How a shard is configured and searched: int8 HNSW rescored in float32, and the payload
indexes every store has. Why each number is what it is: docs/local-store.md."""

from __future__ import annotations

import qdrant_edge as qe

# HNSW over the int8 copy, then the best OVERSAMPLING x top_k rescored with the float32
# originals, so scores are exact; a larger store needs a wider beam for the same recall.
HNSW_EF = 64
HNSW_EF_LARGE = 128
LARGE_STORE = 250_000
OVERSAMPLING = 2.0
# A refinement's pool (10 x top_k) is rescored from fewer: its last records matter less
# than a top 10's, and the wider beam is most of its search (docs/performance.md).
POOL_OVERSAMPLING = 1.2
# Payload fields every store has indexed: namespace and key filters, id prefixes.
BASE_INDEXES = ("ns", "keys", "id")


def memory_of(vectors_memory: str) -> qe.Memory:
    """SEARCH_VECTORS_MEMORY as Qdrant's setting: pinned is cold plus our own lock (pin.py)."""
    return qe.Memory.Cached if vectors_memory == "cached" else qe.Memory.Cold


def shard_config(
    dimension: int, vectors_memory: qe.Memory, *, payload_memory: qe.Memory = qe.Memory.Cached
) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        # The float32 originals are only read to rescore candidates and to return values;
        # the search runs on the int8 copy, held in RAM.
        vectors=qe.EdgeVectorParams(
            size=dimension, distance=qe.Distance.Cosine, memory=vectors_memory
        ),
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=128, full_scan_threshold=10_000),
        # The builder indexes whatever it is given; the threshold that matters is ours.
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
        quantization_config=qe.ScalarQuantizationConfig(
            type=qe.ScalarType.Int8, quantile=0.99, always_ram=True
        ),
        # Every query reads its matches' payload (their ids at least): cached, not from disk.
        payload_memory=payload_memory,
    )


def build_config(dimension: int, vectors_memory: str) -> qe.EdgeConfig:
    """What the build child opens its copy with: the serving config with the payload left on
    disk, since a build reads a payload only to carry it into a merged segment."""
    return shard_config(dimension, memory_of(vectors_memory), payload_memory=qe.Memory.Cold)


def search_ef(points: int) -> int:
    return HNSW_EF_LARGE if points > LARGE_STORE else HNSW_EF


def index_base_fields(shard: qe.EdgeShard) -> None:
    """Creates the payload indexes every store has, where missing (older stores)."""
    present = shard.info().payload_schema
    for key in BASE_INDEXES:
        if key not in present:
            shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
    shard.flush()
