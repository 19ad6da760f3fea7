"""The embedded store: Qdrant Edge (`qdrant-edge-py`, beta) on disk under DATA_DIR.

Only this package imports qdrant_edge. On disk, under `<DATA_DIR>/local/`:
    store.json        which model filled the store, which shard is current (manifest.py)
    shard-NNNNNN/     the Qdrant Edge shard (segments + write-ahead log)
    lock              held by the one process that has the store open (root_lock.py)

One concern per module:
    store.py          LocalStore: open, bind, close, writes, reads
    layout.py         records as points and payloads; filters.py, Pinecone filters over them
    points.py         records to points and back, within a reply budget
    shard_config.py   the shard's HNSW, quantization and payload settings
    manifest.py       store.json; migrate.py, an older layout rewritten at open
    builder.py        background HNSW builds (copy, build, replay, swap), with
    build_child.py    the child process that builds; sparse_copy.py, the copy
    pin.py            the live shard's vectors locked in memory (SEARCH_VECTORS_MEMORY)

The build child imports only shard_config.py and memory.py, never the store. Design and
figures: docs/local-store.md.
"""
