"""search_service's own Prometheus series, beside the gRPC ones (imagesearch.metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from search_service.domain import StoreStats


class SearchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.vectors = Gauge(
            "search_vectors", "Vectors stored, per namespace (refreshed every few seconds).",
            ["namespace"], registry=registry,
        )  # fmt: skip
        self.embed_seconds = Histogram(
            "search_embed_call_seconds",
            "Calls to embed_service, seconds, by method.",
            ["method"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.index_builds = Counter(
            "search_index_builds", "Background HNSW builds of the local store, by outcome.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.store_errors = Counter(
            "search_store_errors", "Errors the vector store answered, by kind.", ["kind"],
            registry=registry,
        )  # fmt: skip
        self.store_retries = Counter(
            "search_store_retries", "Requests to Pinecone that its SDK retried.", registry=registry
        )
        self.index_wait_seconds = Counter(
            "search_index_write_wait_seconds",
            "Local store: seconds upserts waited for a build to index the unindexed tail "
            "(SEARCH_INDEX_MAX_UNINDEXED).",
            registry=registry,
        )
        self.last_build_seconds = Gauge(
            "search_index_build_last_seconds",
            "How long the last finished HNSW build took.",
            registry=registry,
        )

        self.unindexed = Gauge(
            "search_index_unindexed_vectors",
            "Local store: vectors not yet in the HNSW index, searched exactly meanwhile.",
            registry=registry,
        )
        self.building = Gauge(
            "search_index_building", "Local store: 1 while a background HNSW build runs.",
            registry=registry,
        )  # fmt: skip

    def observe_index(self, indexed: int, stored: int, building: bool) -> None:
        self.unindexed.set(max(0, stored - indexed))
        self.building.set(int(building))

    def observe_stats(self, stats: StoreStats) -> None:
        self.vectors.clear()
        for namespace, count in stats.namespaces.items():
            self.vectors.labels(namespace or "__default__").set(count)

    def observe_build(self, ok: bool, seconds: float) -> None:
        self.index_builds.labels("ok" if ok else "failed").inc()
        if ok:
            self.last_build_seconds.set(seconds)
