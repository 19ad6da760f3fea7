"""What a query does beyond nearest neighbours, the same over every store: examples combined
into one vector, near-duplicates collapsed, diversity (maximal marginal relevance) and
autocut. Pure functions over candidates with their vectors; no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from search_service.domain import ScoredRecord, Vector
from search_service.errors import InvalidArgument

# Cosines are compared with this tolerance, so collapse_above = 1 collapses identical vectors.
COSINE_TOLERANCE = 1e-6
# A weighted sum shorter than this has no direction to search.
MIN_NORM = 1e-6


@dataclass(slots=True)
class Pick:
    """A kept candidate and the ids collapsed into it."""

    record: ScoredRecord
    collapsed: list[str] = field(default_factory=list)


def combine(vectors: Sequence[Vector], weights: Sequence[float]) -> Vector:
    """The normalized weighted sum of unit vectors; INVALID_ARGUMENT (`examples`) when the
    sum has no direction (positives and negatives cancel)."""
    total = np.zeros(len(vectors[0]), np.float64)
    for vector, weight in zip(vectors, weights, strict=True):
        total += weight * np.asarray(vector, np.float64)
    norm = float(np.linalg.norm(total))
    if norm < MIN_NORM:
        raise InvalidArgument(
            "the examples cancel out: their weighted sum has no direction to search; "
            "change a weight or add a positive example",
            field="examples",
        )
    unit: Vector = (total / norm).astype(np.float32)
    return unit


def collapse(pool: Sequence[ScoredRecord], threshold: float, keep: int | None) -> list[Pick]:
    """Walks `pool` (best first) keeping a record unless its cosine to a kept one is >=
    `threshold`; a dropped record goes to the best-scoring kept record it is that close to.
    With `keep`, stops once that many are kept (later records are not examined)."""
    picks: list[Pick] = []
    kept: npt.NDArray[np.float32] | None = None  # the kept vectors, a row each, filled in turn
    for record in pool:
        if keep is not None and len(picks) >= keep:
            break
        vector = _values(record)
        if kept is None:
            kept = np.empty((min(len(pool), keep or len(pool)), len(vector)), np.float32)
        else:
            cosines = kept[: len(picks)] @ vector
            close = np.flatnonzero(cosines >= threshold - COSINE_TOLERANCE)
            if close.size:
                picks[int(close[0])].collapsed.append(record.id)  # picks are in score order
                continue
        kept[len(picks)] = vector
        picks.append(Pick(record))
    return picks


def diversify(query: Vector, picks: Sequence[Pick], lam: float, top_k: int) -> list[Pick]:
    """Maximal marginal relevance: greedily the candidate maximizing
    lam * cos(q, r) - (1 - lam) * max cos(r, s) over those already chosen; the first is the
    best by score, and ties go to the higher score (the earlier in `picks`)."""
    if not picks:
        return []
    vectors = np.stack([_values(p.record) for p in picks])
    relevance = vectors @ query
    chosen = [0]
    nearest = vectors @ vectors[0]  # each candidate's max cosine to the chosen ones
    left = np.ones(len(picks), bool)
    left[0] = False
    while len(chosen) < min(top_k, len(picks)):
        marginal = lam * relevance - (1 - lam) * nearest
        marginal[~left] = -np.inf
        best = int(np.argmax(marginal))  # the first of equals: the higher score
        chosen.append(best)
        left[best] = False
        nearest = np.maximum(nearest, vectors @ vectors[best])
    return [picks[i] for i in chosen]


def autocut(scores: Sequence[float], cut: int) -> int:
    """How many results to keep: Weaviate's autocut (entities/autocut/autocut.go), in
    float32 as it computes. The scores' distance from a straight line between the first and
    the last is taken at each point; the answer ends before the `cut`-th local maximum.
    All-equal scores are never cut."""
    y = np.asarray(scores, np.float32)
    if len(y) <= 1 or y[0] == y[-1]:
        return len(y)
    step = np.float32(1.0) / np.float32(len(y) - 1)
    x = np.arange(len(y), dtype=np.float32) * step
    diff = (y - y[0]) / (y[-1] - y[0]) - x
    extrema = 0
    for i in range(1, len(diff)):
        if i == len(diff) - 1:
            peak = diff[i] > diff[i - 1] and diff[i] > diff[i - 2]
        else:
            peak = diff[i] > diff[i - 1] and diff[i] > diff[i + 1]
        if peak:
            extrema += 1
            if extrema >= cut:
                return i
    return len(y)


def _values(record: ScoredRecord) -> npt.NDArray[np.float32]:
    assert record.values is not None, "refinements need the candidates' vectors"
    return np.asarray(record.values, np.float32)
