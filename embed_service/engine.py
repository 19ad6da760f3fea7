"""The embedding engine: prepare (decode, tokenize) -> core (batched forward) -> post.

Domain code only: no gRPC here. Decoding runs on a pool of CPU threads (Pillow
releases the GIL), the forward passes on the model's lanes (lanes.py) behind the
dynamic batchers, and admission is bounded so an overloaded service answers at once
instead of piling up work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from imagesearch.limits import MAX_TEXT_CHARS

from embed_service.batching import BatchStats, DynamicBatcher
from embed_service.config import EmbedSettings
from embed_service.errors import InvalidRequest, ItemError, Overloaded, TextEmpty, TextTooLong
from embed_service.images import Preprocessing, prepare
from embed_service.lanes import Lanes
from embed_service.metrics import EmbedMetrics
from embed_service.model import EmbeddingModel

Pixels = npt.NDArray[np.float32]
Vector = npt.NDArray[np.float32]
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """A vector, or the reason there is none."""

    vector: Vector | None = None
    error: ItemError | None = None
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class ModelDescription:
    model_id: str
    dimension: int
    fingerprint: str
    device: str
    runtime: str
    precision: str
    max_batch_size: int
    max_text_tokens: int
    image_size: int
    family: str


class EmbedEngine:
    """Embeds images and texts with one loaded model, batching across callers."""

    def __init__(
        self, model: EmbeddingModel, settings: EmbedSettings, metrics: EmbedMetrics | None = None
    ) -> None:
        self._model = model
        self._settings = settings
        self._metrics = metrics
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, "decode")
        self._lanes = Lanes(
            settings.lanes_for(model.device.type, model.runtime_name, model.precision),
            model.runtime.set_lanes,
            backlog=lambda: self._images.waiting + self._texts.waiting,
            warm=self._warm_both_towers,
            on_switch=metrics.lane_switches.inc if metrics else lambda: None,
        )
        if self._lanes.count > 1:
            log.info(
                "forward passes: one on all %d threads when nothing waits, else %d side by side "
                "(EMBED_LANES)",
                settings.torch_threads,
                self._lanes.count,
            )
        wait_s = settings.batch_wait_ms / 1000
        self._images = DynamicBatcher[Pixels, Vector](
            self._embed_pixels,
            lanes=self._lanes,
            max_batch=settings.model_batch_size,
            max_wait_s=wait_s,
            name="images",
            on_batch=metrics.batch_items.labels("images").observe if metrics else None,
        )
        self._texts = DynamicBatcher[str, tuple[Vector, bool]](
            self._embed_texts,
            lanes=self._lanes,
            max_batch=settings.model_batch_size,
            max_wait_s=wait_s,
            name="texts",
            on_batch=metrics.batch_items.labels("texts").observe if metrics else None,
        )
        self._admitted = 0
        self._forward_seconds = (
            {kind: metrics.forward_seconds.labels(kind) for kind in ("images", "texts")}
            if metrics is not None
            else {}
        )
        if metrics is not None:
            info = self.info()
            metrics.model.labels(
                info.model_id, info.fingerprint, info.device, info.runtime, info.precision
            ).set(1)
            metrics.count_waiting(lambda: self._images.waiting + self._texts.waiting)
            metrics.lanes_shape.set_function(lambda: self._lanes.shape)

    @property
    def model(self) -> EmbeddingModel:
        return self._model

    @property
    def lanes(self) -> Lanes:
        return self._lanes

    async def on_model_thread(self, work: Callable[[], T]) -> T:
        """Runs `work` as one wide pass on the lanes' threads: torch keeps a pool of
        intra-op threads per calling thread, and a second pool would fight the first."""
        return await self._lanes.run(work, shape=1)

    @property
    def image_batches(self) -> BatchStats:
        return self._images.stats

    def info(self) -> ModelDescription:
        m = self._model
        return ModelDescription(
            model_id=m.model_id,
            dimension=m.dimension,
            fingerprint=m.fingerprint,
            device=str(m.device),
            runtime=m.runtime_name,
            precision=m.precision,
            max_batch_size=self._settings.max_batch_size,
            max_text_tokens=m.max_text_tokens,
            image_size=m.image_size,
            family=m.family.name,
        )

    async def start(self) -> None:
        await self._lanes.prepare()
        await self._images.start()
        await self._texts.start()

    def _warm_both_towers(self) -> None:
        self._model.embed_pixels(self._model.preprocessing.probe(1))
        self._model.embed_tokens(self._model.tokenize(["a photo"]))

    async def warm_up(self) -> None:
        """Runs each tower once so the first caller does not pay for lazy init."""
        await self._images.submit([self._model.preprocessing.probe(1)[0]])
        await self._texts.submit(["a photo"])

    async def stop(self) -> None:
        await self._images.stop()
        await self._texts.stop()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        await self._lanes.stop()  # waits for a forward pass still running

    async def embed_images(self, images: Sequence[bytes]) -> list[EmbeddingResult]:
        """One result per image, in order; a bad image gets an error, the rest are embedded."""
        with self._admit(len(images), "images"):
            loop = asyncio.get_running_loop()
            spec = self._model.preprocessing
            job = functools.partial(self._prepare, spec=spec, limit=self._settings.max_image_pixels)
            prepared = await asyncio.gather(
                *(loop.run_in_executor(self._decode_pool, job, data) for data in images)
            )
            good = [p for p in prepared if not isinstance(p, ItemError)]
            if self._metrics is not None:
                for failure in (p for p in prepared if isinstance(p, ItemError)):
                    self._metrics.decode_failures.labels(failure.reason).inc()
            vectors = iter(await self._images.submit(good))
            return [
                EmbeddingResult(error=p)
                if isinstance(p, ItemError)
                else EmbeddingResult(next(vectors))
                for p in prepared
            ]

    async def embed_texts(self, texts: Sequence[str]) -> list[EmbeddingResult]:
        """One result per text, in order; over-long texts are cut and marked truncated."""
        with self._admit(len(texts), "texts"):
            errors = [_text_error(text) for text in texts]
            good = [text for text, error in zip(texts, errors, strict=True) if error is None]
            results = iter(await self._texts.submit(good))
            out = []
            for error in errors:
                if error is None:
                    vector, cut = next(results)
                    out.append(EmbeddingResult(vector, truncated=cut))
                else:
                    out.append(EmbeddingResult(error=error))
            return out

    @contextlib.contextmanager
    def _admit(self, count: int, field: str) -> Iterator[None]:
        limit = self._settings.max_batch_size
        if count == 0:
            raise InvalidRequest(f"{field} is empty: send at least one", field=field)
        if count > limit:
            raise InvalidRequest(
                f"{count} {field} in one request; the most is {limit} (EMBED_MAX_BATCH_SIZE). "
                "Split the batch into several requests.",
                field=field,
                reason="BATCH_TOO_LARGE",
            )
        if self._admitted + count > self._settings.queue_size:
            raise Overloaded(
                f"the service is busy ({self._admitted} items in flight, limit "
                f"{self._settings.queue_size}); retry with backoff or add replicas"
            )
        self._admitted += count
        try:
            yield
        finally:
            self._admitted -= count

    def _prepare(self, data: bytes, *, spec: Preprocessing, limit: int) -> Pixels | ItemError:
        timer = self._metrics.decode_seconds.time() if self._metrics else contextlib.nullcontext()
        with timer:
            try:
                return prepare(data, spec, max_pixels=limit)
            except ItemError as exc:
                return exc

    def _timed_forward(self, kind: str) -> contextlib.AbstractContextManager[object]:
        # Timed on the lane's thread itself, so the figure is the pass, not its thread hops.
        histogram = self._forward_seconds.get(kind)
        return histogram.time() if histogram is not None else contextlib.nullcontext()

    def _embed_pixels(self, batch: list[Pixels]) -> list[Vector]:
        with self._timed_forward("images"):
            return list(self._model.embed_pixels(np.stack(batch)))

    def _embed_texts(self, batch: list[str]) -> list[tuple[Vector, bool]]:
        with self._timed_forward("texts"):
            tokens = self._model.tokenize(batch)
            return list(zip(self._model.embed_tokens(tokens), tokens.truncated, strict=True))


def _text_error(text: str) -> ItemError | None:
    if len(text) > MAX_TEXT_CHARS:
        return TextTooLong(
            f"the text is {len(text):,} characters; at most {MAX_TEXT_CHARS:,} are accepted "
            "(the model reads only its first few hundred)"
        )
    if not text.strip():
        return TextEmpty("the text is empty")
    return None
