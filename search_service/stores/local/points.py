"""Records to Qdrant points and back, for writes and for reads bounded by a reply budget."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import qdrant_edge as qe

from search_service.domain import Record, Vector
from search_service.paging import refused
from search_service.stores.base import check_reply, reply_bytes
from search_service.stores.local import filters, layout

# Records read from the shard at a time where the reply size must be watched.
RECORD_CHUNK = 128


def upsert_parts(
    namespace: str, records: Sequence[Record]
) -> tuple[qe.UpdateOperation, set[tuple[str, qe.PayloadSchemaType]]]:
    """The write of `records`, and the payload paths (with index types) their metadata has."""
    fields = {field for record in records for field in filters.stored_fields(record.metadata)}
    return upsert_op(namespace, records), fields


def upsert_op(namespace: str, records: Sequence[Record]) -> qe.UpdateOperation:
    return qe.UpdateOperation.upsert_points(
        [
            qe.Point(
                layout.point_id(namespace, r.id),
                r.values.astype(np.float32).tolist(),
                layout.payload(namespace, r.id, r.metadata),
            )
            for r in records
        ]
    )


def read_records(
    shard: qe.EdgeShard,
    point_ids: Sequence[str],
    *,
    values: bool,
    metadata: bool,
    max_bytes: int | None,
    what: str,
) -> dict[str, Record]:
    """The records of `point_ids` that exist, by point id, read RECORD_CHUNK at a time;
    ReplyTooLarge at the first that takes them past `max_bytes`."""
    found: dict[str, Record] = {}
    size = 0
    for start in range(0, len(point_ids), RECORD_CHUNK):
        chunk: list[qe.PointId] = list(point_ids[start : start + RECORD_CHUNK])
        for point in shard.retrieve(
            chunk, with_payload=True if metadata else ["id"], with_vector=values
        ):
            payload = point.payload or {}
            record = Record(
                id=payload["id"],
                values=vector_of(point.vector) if values else np.zeros(0, np.float32),
                metadata=layout.metadata_of(payload) if metadata else {},
            )
            size += reply_bytes(
                record.id, record.values if values else None, record.metadata if metadata else None
            )
            check_reply(size, max_bytes, sent=len(found), asked=len(point_ids), what=what)
            found[str(point.id)] = record
    return found


def point_cursor(cursor: str) -> str:
    """A listing cursor of this store is a point id (a UUID); anything else is refused."""
    try:
        return str(uuid.UUID(cursor))
    except ValueError:
        raise refused("does not continue a listing of this store") from None


def vector_of(raw: Any) -> Vector:
    if isinstance(raw, dict):  # named vectors; ours is the unnamed default ""
        raw = raw[""]
    return np.asarray(raw, dtype=np.float32)
