"""embed_service's own Prometheus series, beside the gRPC ones (imagesearch.metrics)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class EmbedMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_items = Histogram(
            "embed_batch_items",
            "Items per forward pass.",
            ["kind"],
            registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        # Where a request's time goes: the forward pass itself, and each image's decode.
        self.forward_seconds = Histogram(
            "embed_forward_seconds",
            "Seconds of one forward pass (a batch), timed on the thread that ran it.",
            ["kind"],
            registry=registry,
            buckets=SECONDS,
        )
        self.decode_seconds = Histogram(
            "embed_decode_seconds",
            "Seconds to decode and preprocess one image, readable or not, on a decode thread.",
            registry=registry,
            buckets=SECONDS,
        )
        self.waiting = Gauge(
            "embed_items_waiting", "Items queued for a forward pass.", registry=registry
        )
        self.decode_failures = Counter(
            "embed_decode_failures", "Inputs that could not be embedded, by reason.", ["reason"],
            registry=registry,
        )  # fmt: skip
        self.lanes_shape = Gauge(
            "embed_lanes_shape",
            "Forward passes the model is set up to run side by side now: 1 (one pass on every "
            "thread) or EMBED_LANES (under load).",
            registry=registry,
        )
        self.lane_switches = Counter(
            "embed_lane_switches",
            "Changes between one pass on every thread and passes side by side.",
            registry=registry,
        )
        self.model = Gauge(
            "embed_model_info",
            "The loaded model (always 1).",
            ["model_id", "fingerprint", "device", "runtime", "precision"],
            registry=registry,
        )

    def count_waiting(self, waiting: Callable[[], float]) -> None:
        self.waiting.set_function(waiting)
