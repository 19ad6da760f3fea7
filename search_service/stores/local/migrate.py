"""Rewrites a shard of an older layout into the current one, in place, before it serves."""

from __future__ import annotations

import logging

import qdrant_edge as qe

from search_service.stores.local import layout
from search_service.stores.local.points import vector_of
from search_service.stores.local.shard_config import BASE_INDEXES

log = logging.getLogger(__name__)

PAGE = 1000


def migrate(shard: qe.EdgeShard, version: int) -> int:
    """Moves every point of layout `version` to the current layout; returns how many moved.

    Idempotent: points already in the current layout are left alone, so a migration cut
    short by a crash resumes at the next open (store.json is rewritten only after it).
    """
    assert version == 1
    offset: qe.PointId | None = None
    moved = 0
    while True:
        page, offset = shard.scroll(
            qe.ScrollRequest(offset=offset, limit=PAGE, with_payload=True, with_vector=True)
        )
        fresh, stale = [], []
        for point in page:
            stored = point.payload or {}
            namespace, record_id = stored["ns"], stored["id"]
            current = layout.point_id(namespace, record_id)
            if str(point.id) == current:
                continue
            metadata = layout.metadata_of_v1(stored)
            fresh.append(
                qe.Point(
                    current,
                    vector_of(point.vector).tolist(),
                    layout.payload(namespace, record_id, metadata),
                )
            )
            stale.append(point.id)
        if fresh:
            shard.update(qe.UpdateOperation.upsert_points(fresh))
            shard.update(qe.UpdateOperation.delete_points(stale))
            moved += len(fresh)
        if offset is None:
            break
    for key in shard.info().payload_schema:
        if key not in BASE_INDEXES:  # layout 1's metadata paths address nothing now
            shard.update(qe.UpdateOperation.delete_field_index(key))
    shard.flush()
    return moved
