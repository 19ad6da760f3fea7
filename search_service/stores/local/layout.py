"""How the local store lays records out as Qdrant Edge points, and filters over them.

Pure functions, no I/O. Layout version 2 (store.json "format": 2):

    point id   uuid5(ID_NAMESPACE, json.dumps([namespace, id])): JSON's string escaping
               makes the encoding of the pair unambiguous, so distinct pairs never share
               a point (version 1 joined them with NUL, which an id could contain).
    payload    {"ns": namespace, "id": id, "keys": [metadata keys],
                "md": {"k<hex of key>": value}, "bools": {"k<hex of key>": "true"|"false"},
                "nums": {"k<hex of key>": "<shortest repr of the float>"}}

Metadata keys are hex-encoded because Qdrant's JSON paths cannot address a key with a
double quote or backslash, and dots or brackets would read as a path; `k` keeps an
all-digit key from reading as an array index. `keys` lets `$exists`/`$ne`/`$nin` tell a
missing field from an empty list the way Pinecone does. Booleans are also kept as
"true"/"false" under `bools`: qdrant-edge-py 0.9.0 turns `MatchValue(True)` into the
integer 1, which matches no stored boolean.

Numbers are kept twice because qdrant-edge-py 0.9.0 reads stored floats back up to 2 ULP
off (measured: 8,132 of 45,987 random doubles; values such as 19.99 or 3.0 are exact).
`nums` holds each one's exact repr as a keyword: reads and `$eq`/`$in` use it. Ranges
use the float in `md` away from the bound, and the exact keywords of the floats within
NUMBER_SLACK_ULPS of it, so `$gt`/`$lt` are exact while the store's error stays under
that slack.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from search_service.filters import Metadata

LAYOUT = 2
# Point ids are uuid5 under this project-specific namespace.
ID_NAMESPACE = uuid.UUID("5f0c7a52-3b8e-4a55-9d43-8f1e2f8a6c11")

# Four times the largest error measured; see the module doc.
NUMBER_SLACK_ULPS = 8


def point_id(namespace: str, record_id: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps([namespace, record_id])))


def point_id_v1(namespace: str, record_id: str) -> str:
    """Layout 1's id, ambiguous when an id or namespace holds NUL; read only to migrate."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{namespace}\x00{record_id}"))


def _encoded(key: str) -> str:
    return "k" + key.encode().hex()


def _decoded(encoded: str) -> str:
    return bytes.fromhex(encoded[1:]).decode()


def metadata_path(field: str) -> str:
    return f"md.{_encoded(field)}"


def bool_path(field: str) -> str:
    return f"bools.{_encoded(field)}"


def number_path(field: str) -> str:
    return f"nums.{_encoded(field)}"


def key_of_path(path: str) -> str | None:
    """The encoded metadata key a payload path addresses (md, bools or nums); None for
    the store's own fields."""
    top, _, key = path.partition(".")
    return key if top in ("md", "bools", "nums") and key else None


def exact_word(number: float) -> str:
    return repr(number + 0.0)  # + 0.0: -0.0 and 0.0 are one number, as Pinecone compares


def payload(namespace: str, record_id: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "ns": namespace,
        "id": record_id,
        "keys": sorted(metadata),
        "md": {_encoded(k): v for k, v in metadata.items()},
        "bools": {_encoded(k): bool_word(v) for k, v in metadata.items() if isinstance(v, bool)},
        "nums": {_encoded(k): exact_word(v) for k, v in metadata.items() if is_number(v)},
    }


def is_number(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


def metadata_of(stored: Mapping[str, Any] | None) -> Metadata:
    if not stored:
        return {}
    exact = stored.get("nums", {})
    return {
        _decoded(k): float(exact[k]) if k in exact else v for k, v in stored.get("md", {}).items()
    }


def metadata_of_v1(stored: Mapping[str, Any] | None) -> Metadata:
    """Layout 1 kept metadata under its own keys; read only to migrate."""
    return dict(stored.get("md", {})) if stored else {}


def bool_word(value: bool) -> str:
    return "true" if value else "false"
