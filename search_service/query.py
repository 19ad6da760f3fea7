"""A Query, free of gRPC: the query vector (one of image, text, id, vector, or several
weighted examples), the store's nearest records, then the refinements of `refine.py`.

Refinements work on a pool: the best POOL_FACTOR x top_k records by cosine to the query
vector, after the filter and min_score (a record under min_score never enters it), and
without any record given as an id example. Then, in this order: collapse, diversity (MMR),
autocut. A query that only autocuts needs no pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from imagesearch.limits import MAX_TEXT_CHARS

from search_service.domain import Embedded, Embedder, ScoredRecord, Vector
from search_service.errors import ImageRejected, InvalidArgument, InvalidVector, NotFound
from search_service.filters import (
    Condition,
    Metadata,
    parse_filter,
    validate_id,
    validate_namespace,
)
from search_service.model_guard import ModelGuard
from search_service.refine import COSINE_TOLERANCE, Pick, autocut, collapse, combine, diversify
from search_service.stores.base import Diversifies, VectorStore

MAX_TOP_K = 10_000
DEFAULT_TOP_K = 10
MAX_EXAMPLES = 16
POOL_FACTOR = 10
# Collapse alone first reads this many x top_k candidates; the whole pool only if needed.
COLLAPSE_CHUNK = 2
# Candidates whose metadata is read with them (at most 40 KB each, so 2.6 MB at worst).
INLINE_METADATA_MOST = 64
# A pool holds POOL_FACTOR x top_k records with their vectors: top_k is bounded with
# diversity or collapse so that the pool stays at most 10,000 records.
MAX_REFINED_TOP_K = 1000
# A float32 vector rounded from a unit one has a norm within ~6e-8 of 1.
UNIT_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class Example:
    """One example of a query: one of image, text, id, vector (none: refused)."""

    image: bytes | None = None
    text: str | None = None
    id: str | None = None
    vector: Sequence[float] | None = None
    weight: float | None = None


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """`query` (its weight unused) or `examples`, exactly one of them set."""

    query: Example = Example()
    top_k: int = 0
    filter: dict[str, object] | None = None
    namespace: str = ""
    include_metadata: bool = False
    include_values: bool = False
    min_score: float | None = None
    examples: Sequence[Example] = ()
    diversity: float = 0.0
    collapse_above: float = 0.0
    autocut: int = 0


class Querying:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        model: ModelGuard,
        max_reply_bytes: int | None,
    ) -> None:
        self._store = store
        self._embed = embedder
        self._model = model
        self._max_reply_bytes = max_reply_bytes

    async def query(self, spec: QuerySpec) -> list[ScoredRecord]:
        namespace = validate_namespace(spec.namespace)
        top_k = _checked(spec)
        condition = parse_filter(spec.filter)
        if spec.examples:
            if spec.query != Example():
                raise InvalidArgument(
                    "set either examples or one of image, text, id and vector, not both",
                    field="examples",
                )
            vector, excluded = await self._combined(spec.examples, namespace)
        else:
            vector, excluded = await self._vector_of(spec.query, namespace, ""), set()
        if spec.diversity or spec.collapse_above:
            found = await self._refined(spec, namespace, vector, condition, top_k, excluded)
        else:
            found = await self._store.query(
                namespace, vector, top_k=top_k + len(excluded), condition=condition,
                include_values=spec.include_values, include_metadata=spec.include_metadata,
                max_bytes=self._max_reply_bytes,
            )  # fmt: skip
            found = _ranked(found, spec.min_score, excluded)[:top_k]
        if spec.autocut and found:
            found = found[: autocut([m.score for m in found], spec.autocut)]
        return found

    async def _refined(
        self,
        spec: QuerySpec,
        namespace: str,
        vector: Vector,
        condition: Condition | None,
        top_k: int,
        excluded: set[str],
    ) -> list[ScoredRecord]:
        if not spec.diversity:
            return await self._collapsed(spec, namespace, vector, condition, top_k, excluded)
        lam = 1.0 - spec.diversity
        # At lambda 0.5, once the first pick is the query's own vector (a query by id, or a
        # best match of cosine 1), every candidate nearer to the query than to the later
        # picks scores exactly 0; the store's MMR breaks those ties toward the lower score,
        # not the higher, so such a query takes the shared path below.
        ties = lam == 0.5
        own_vector = ties and spec.query.id is not None
        if not spec.collapse_above and not own_vector and isinstance(self._store, Diversifies):
            found = await self._store.query_diverse(
                namespace, vector, top_k=top_k, pool=POOL_FACTOR * top_k, lam=lam,
                condition=condition, min_score=spec.min_score, leave_out=sorted(excluded),
                include_values=spec.include_values, include_metadata=spec.include_metadata,
                max_bytes=self._max_reply_bytes,
            )  # fmt: skip
            if not ties or not found or found[0].score < 1.0 - COSINE_TOLERANCE:
                return found
        # MMR weighs every candidate against every pick: the whole pool with its vectors
        # (not its metadata, which only the few kept need).
        pool = await self._store.query(
            namespace, vector, top_k=POOL_FACTOR * top_k + len(excluded), condition=condition,
            include_values=True, include_metadata=False,
        )  # fmt: skip
        ranked = _ranked(pool, spec.min_score, excluded)[: POOL_FACTOR * top_k]
        picks = (
            collapse(ranked, spec.collapse_above, None)
            if spec.collapse_above
            else [Pick(record) for record in ranked]
        )
        picks = diversify(vector, picks, lam, top_k)
        return _answer(spec, picks, await self._metadata(spec, namespace, picks))

    async def _collapsed(
        self,
        spec: QuerySpec,
        namespace: str,
        vector: Vector,
        condition: Condition | None,
        top_k: int,
        excluded: set[str],
    ) -> list[ScoredRecord]:
        """Collapse alone walks the pool by score and stops at top_k kept, so it asks first
        for the best COLLAPSE_CHUNK x top_k with their vectors, and for the whole pool only
        when those do not keep top_k: the pool's vectors cost more than the search."""
        asked = COLLAPSE_CHUNK * top_k
        while True:
            # Metadata with the candidates while that is small: one call to the store, not two.
            inline = spec.include_metadata and asked <= INLINE_METADATA_MOST
            found = await self._store.query(
                namespace, vector, top_k=asked + len(excluded), condition=condition,
                include_values=True, include_metadata=inline,
            )  # fmt: skip
            ranked = _ranked(found, spec.min_score, excluded)[: POOL_FACTOR * top_k]
            picks = collapse(ranked, spec.collapse_above, top_k)
            exhausted = len(found) < asked + len(excluded)
            if len(picks) >= top_k or exhausted or asked >= POOL_FACTOR * top_k:
                break
            asked = POOL_FACTOR * top_k
        if inline:
            return _answer(spec, picks, {p.record.id: p.record.metadata or {} for p in picks})
        return _answer(spec, picks, await self._metadata(spec, namespace, picks))

    async def _metadata(
        self, spec: QuerySpec, namespace: str, picks: list[Pick]
    ) -> dict[str, Metadata]:
        if not spec.include_metadata:
            return {}
        wanted = [p.record.id for p in picks]
        fetched = await self._store.fetch(namespace, wanted, max_bytes=self._max_reply_bytes)
        return {r.id: r.metadata for r in fetched}

    async def _combined(
        self, examples: Sequence[Example], namespace: str
    ) -> tuple[Vector, set[str]]:
        if len(examples) > MAX_EXAMPLES:
            raise InvalidArgument(
                f"examples has {len(examples)} items; at most {MAX_EXAMPLES} per query",
                field="examples",
            )
        weights = [_weight(example, i) for i, example in enumerate(examples)]
        wanted = [
            validate_id(e.id, field=f"examples[{i}].id")
            for i, e in enumerate(examples)
            if e.id is not None
        ]
        stored: dict[str, Vector] = {}
        if wanted:  # every id example in one read of the store
            await self._model.for_vectors(write=False)
            found = await self._store.fetch(namespace, wanted)
            stored = {record.id: record.values for record in found}
        vectors = []
        for i, example in enumerate(examples):
            if example.id is None:
                vectors.append(await self._vector_of(example, namespace, f"examples[{i}]."))
            elif example.id in stored:
                vectors.append(stored[example.id])
            else:
                raise NotFound(
                    f"examples[{i}].id: no record with id {example.id!r} in namespace {namespace!r}"
                )
        return combine(vectors, weights), set(wanted)

    async def _vector_of(self, example: Example, namespace: str, prefix: str) -> Vector:
        """The unit vector of one example; errors name `prefix` + the field."""
        if example.image is not None:
            if not example.image:
                raise ImageRejected(
                    "the query image is empty", field=f"{prefix}image", reason="IMAGE_EMPTY"
                )
            image = example.image
            embedded = await self._model.embed(
                lambda: self._embed.embed_images([image]), write=False
            )
            return _vector_or_error(embedded.items[0], f"{prefix}image")
        if example.text is not None:
            text = example.text
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidArgument(
                    f"{prefix}text is {len(text):,} characters; at most {MAX_TEXT_CHARS:,} are "
                    "accepted (the model reads only its first few hundred)",
                    field=f"{prefix}text",
                    reason="TEXT_TOO_LONG",
                )
            embedded = await self._model.embed(lambda: self._embed.embed_text(text), write=False)
            return _vector_or_error(embedded.items[0], f"{prefix}text")
        if example.id is not None:  # the single query's: examples' ids are read together
            record_id = validate_id(example.id, field=f"{prefix}id")
            await self._model.for_vectors(write=False)
            found = await self._store.fetch(namespace, [record_id])
            if not found:
                raise NotFound(f"no record with id {record_id!r} in namespace {namespace!r}")
            return found[0].values
        if example.vector is not None:
            model = await self._model.for_vectors(write=False)
            return unit_vector(example.vector, model.dimension, f"{prefix}vector.values")
        if prefix:
            raise InvalidArgument(
                f"{prefix[:-1]} sets none of image, text, id or vector", field=prefix[:-1]
            )
        raise InvalidArgument("set one of image, text, id or vector", field="query")


def _answer(spec: QuerySpec, picks: list[Pick], details: dict[str, Metadata]) -> list[ScoredRecord]:
    return [
        replace(
            p.record,
            values=p.record.values if spec.include_values else None,
            metadata=details.get(p.record.id, {}) if spec.include_metadata else None,
            collapsed_ids=tuple(p.collapsed),
        )
        for p in picks  # at most top_k: collapse and diversify stop there
        if not spec.include_metadata or p.record.id in details  # deleted in between
    ]


def _checked(spec: QuerySpec) -> int:
    """top_k, once every number of the query is in range; INVALID_ARGUMENT naming it if not."""
    top_k = spec.top_k or DEFAULT_TOP_K
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidArgument(f"top_k is {top_k}; it must be 1-{MAX_TOP_K}", field="top_k")
    if spec.min_score is not None and not math.isfinite(spec.min_score):
        raise InvalidArgument(
            f"min_score is {spec.min_score}; it must be a finite number (scores are -1 to 1)",
            field="min_score",
        )
    for name, value in (("diversity", spec.diversity), ("collapse_above", spec.collapse_above)):
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise InvalidArgument(f"{name} is {value}; it must be 0 (off) to 1", field=name)
    if spec.autocut < 0:
        raise InvalidArgument(
            f"autocut is {spec.autocut}; it must be 0 (off) or the number of score jumps to "
            "cut at (1 or more)",
            field="autocut",
        )
    if (spec.diversity or spec.collapse_above) and top_k > MAX_REFINED_TOP_K:
        raise InvalidArgument(
            f"top_k is {top_k}; with diversity or collapse_above it must be at most "
            f"{MAX_REFINED_TOP_K} (they choose among {POOL_FACTOR} x top_k candidates)",
            field="top_k",
        )
    return top_k


def _weight(example: Example, position: int) -> float:
    weight = 1.0 if example.weight is None else example.weight
    if not math.isfinite(weight) or weight == 0:
        raise InvalidArgument(
            f"examples[{position}].weight is {weight}; it must be a finite number other than 0 "
            "(negative: less like this)",
            field=f"examples[{position}].weight",
        )
    return weight


def _ranked(
    found: list[ScoredRecord], min_score: float | None, excluded: set[str]
) -> list[ScoredRecord]:
    """Best first, equal scores in id order on every store; under min_score and the id
    examples left out (applied here, not by the store, so every store agrees)."""
    found.sort(key=lambda match: (-match.score, match.id))
    return [
        m for m in found if m.id not in excluded and (min_score is None or m.score >= min_score)
    ]


def _vector_or_error(out: Embedded, field: str) -> Vector:
    if out.vector is None:
        raise ImageRejected(out.message, field=field, reason=out.reason)
    vector: Vector = out.vector
    return vector


def unit_vector(values: Sequence[float], dimension: int, field: str) -> Vector:
    """`values` scaled to unit length; any finite, non-zero vector is legal.

    Scaled by its largest component first, in float64, so neither squaring 1e30
    (overflow) nor squaring 1e-30 (underflow to zero) can spoil the norm.
    """
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (dimension,):
        raise InvalidVector(
            f"{field} has {vector.size} values; the model's vectors have {dimension}", field=field
        )
    if not np.isfinite(vector).all():
        bad = int(np.flatnonzero(~np.isfinite(vector))[0])
        raise InvalidVector(
            f"{field}[{bad}] is {vector[bad]}; every value must be finite", field=f"{field}[{bad}]"
        )
    largest = float(np.abs(vector).max())
    if largest == 0:
        raise InvalidVector(f"{field} is all zeros; it has no direction to search", field=field)
    if abs(float(np.linalg.norm(vector)) - 1.0) <= UNIT_TOLERANCE:
        # Already unit length as float32 allows (an exported or embedded vector): kept
        # bit for bit, since dividing again by a norm of 1 +- 1e-8 would move last bits.
        return np.asarray(values, dtype=np.float32)
    scaled = vector / largest
    unit: Vector = (scaled / np.linalg.norm(scaled)).astype(np.float32)
    return unit
