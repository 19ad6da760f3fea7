"""A local stand-in for Pinecone's REST API, for tests only.

It speaks the wire format of `shared/reference/pinecone-sdk-10.md` (API 2026-07) so
the real `pinecone` SDK talks to it through `PINECONE_HOST` and the index host it
returns. The control plane listens on one port; each index gets its own data-plane
server on its own port, as each Pinecone index has its own host.

It keeps Pinecone's semantics and rejects what Pinecone rejects, so tests catch what
production would: over-size or over-long upserts, wrong dimensions, all-zero dense
vectors, nested metadata, metadata over 40 KB, malformed filters, top_k out of range,
results over 4 MB, bad index names and tags, a wrong API key. Its filter validator
and evaluator are written here, from Pinecone's documentation, independently of
`search_service.filters`, so the two check each other.

Faults are injected with `fail(path, status, times)`; every request is logged in
`requests` as (method, path).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

MAX_UPSERT_BYTES = 2 * 1000 * 1000
MAX_UPSERT_RECORDS = 1000
MAX_IDS = 1000
MAX_TOP_K = 10_000
MAX_RESULT_BYTES = 4 * 1000 * 1000
MAX_METADATA_BYTES = 40 * 1024
MAX_ID_LENGTH = 512
MAX_LIST_LIMIT = 100
INDEX_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,43}[a-z0-9])?$")
TAG_KEY = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
METRICS = ("cosine", "euclidean", "dotproduct")
DEFAULT_NAMESPACE = "__default__"


class Rejected(Exception):
    """Answered as Pinecone answers an error: an HTTP status and a JSON body."""

    def __init__(self, status: int, message: str, *, grpc_code: int = 3) -> None:
        super().__init__(message)
        self.status = status
        self.grpc_code = grpc_code


@dataclass
class Fault:
    path: str
    status: int
    times: int
    retry_after: float | None = None


@dataclass
class IndexState:
    name: str
    dimension: int
    metric: str
    cloud: str
    region: str
    tags: dict[str, str] | None
    describes_until_ready: int
    server: ThreadingHTTPServer | None = None
    # namespace -> id -> (values, metadata)
    data: dict[str, dict[str, tuple[np.ndarray, dict[str, Any]]]] = field(default_factory=dict)

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def model(self) -> dict[str, Any]:
        ready = self.describes_until_ready <= 0
        return {
            "name": self.name,
            "host": self.host,
            "status": {"ready": ready, "state": "Ready" if ready else "Initializing"},
            "schema": {
                "fields": {
                    "_values": {
                        "type": "dense_vector",
                        "dimension": self.dimension,
                        "metric": self.metric,
                    }
                }
            },
            "deployment": {
                "deployment_type": "managed",
                "cloud": self.cloud,
                "region": self.region,
            },
            "deletion_protection": "disabled",
            "tags": self.tags,
        }


class PineconeStandIn:
    """Control plane + one data-plane server per index, all on 127.0.0.1."""

    def __init__(
        self,
        api_key: str = "standin-key",
        *,
        read_only_keys: tuple[str, ...] = (),
        describes_until_ready: int = 0,
    ) -> None:
        self.api_key = api_key
        self.read_only_keys = read_only_keys
        self.describes_until_ready = describes_until_ready
        self.indexes: dict[str, IndexState] = {}
        self.requests: list[tuple[str, str]] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._control: ThreadingHTTPServer | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> str:
        self._control = self._serve(None)
        return self.url

    @property
    def url(self) -> str:
        assert self._control is not None
        return f"http://127.0.0.1:{self._control.server_address[1]}"

    def stop(self) -> None:
        servers = [self._control, *(i.server for i in self.indexes.values())]
        for server in servers:
            if server is not None:
                server.shutdown()
                server.server_close()

    def __enter__(self) -> PineconeStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, index: IndexState | None) -> ThreadingHTTPServer:
        standin = self

        class Handler(_Handler):
            owner = standin
            target = index

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True, name="pinecone-standin").start()
        return server

    # --- test controls -------------------------------------------------------------------

    def fail(
        self, path: str, status: int, times: int = 1, *, retry_after: float | None = None
    ) -> None:
        """The next `times` requests whose path ends with `path` get `status`."""
        with self._lock:
            self._faults.append(Fault(path, status, times, retry_after))

    def heal(self) -> None:
        """Drops every fault still pending."""
        with self._lock:
            self._faults.clear()

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and p.endswith(path))

    def create(
        self,
        name: str,
        *,
        dimension: int,
        metric: str = "cosine",
        tags: dict[str, str] | None = None,
    ) -> IndexState:
        """Creates an index directly, as if someone else had made it."""
        return self._create_index(
            {
                "name": name,
                "schema": {"fields": {"_values": {"dimension": dimension, "metric": metric}}},
                "deployment": {"cloud": "aws", "region": "us-east-1"},
                "tags": tags,
            }
        )

    # --- dispatch ------------------------------------------------------------------------

    def handle(
        self, index: IndexState | None, method: str, path: str, query: str, body: Any, key: str
    ) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append((method, path))
            for fault in self._faults:
                if fault.times > 0 and path.endswith(fault.path):
                    fault.times -= 1
                    headers = {}
                    if fault.retry_after is not None:
                        headers["Retry-After"] = str(fault.retry_after)
                    return fault.status, _error_body(index, fault.status, "injected fault"), headers
        if key != self.api_key and key not in self.read_only_keys:
            return 401, _error_body(index, 401, "Invalid API Key", code=16), {}
        if (
            key in self.read_only_keys
            and method != "GET"
            and path
            not in (
                "/query",
                "/describe_index_stats",
            )
        ):
            return 403, _error_body(index, 403, "the API key has read-only access", code=7), {}
        try:
            with self._lock:
                if index is None:
                    return self._control_plane(method, path, body)
                return 200, self._data_plane(index, method, path, query, body), {}
        except Rejected as exc:
            return exc.status, _error_body(index, exc.status, str(exc), code=exc.grpc_code), {}

    # --- control plane -------------------------------------------------------------------

    def _control_plane(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        parts = path.strip("/").split("/")
        if parts == ["indexes"] and method == "GET":
            return 200, {"indexes": [i.model() for i in self.indexes.values()]}, {}
        if parts == ["indexes"] and method == "POST":
            return 201, self._create_index(body).model(), {}
        if len(parts) == 2 and parts[0] == "indexes":
            index = self.indexes.get(parts[1])
            if index is None:
                raise Rejected(404, f"Resource {parts[1]} not found", grpc_code=5)
            if method == "GET":
                index.describes_until_ready -= 1
                return 200, index.model(), {}
            if method == "DELETE":
                del self.indexes[parts[1]]
                assert index.server is not None
                threading.Thread(target=_close, args=(index.server,), daemon=True).start()
                return 202, None, {}
            if method == "PATCH":
                tags = body.get("tags")
                if tags is not None:
                    _check_tags(tags)
                    merged = {**(index.tags or {}), **tags}
                    index.tags = {k: v for k, v in merged.items() if v != ""} or None
                return 200, index.model(), {}
        raise Rejected(404, f"no route {method} {path}", grpc_code=5)

    def _create_index(self, body: Mapping[str, Any]) -> IndexState:
        name = body.get("name", "")
        if not isinstance(name, str) or not INDEX_NAME.match(name):
            raise Rejected(
                400,
                f"Invalid index name {name!r}: 1-45 lowercase letters, digits or '-', "
                "not starting or ending with '-'",
            )
        if name in self.indexes:
            raise Rejected(409, f"Resource {name} already exists", grpc_code=6)
        values = body.get("schema", {}).get("fields", {}).get("_values", {})
        dimension, metric = values.get("dimension"), values.get("metric", "cosine")
        if not isinstance(dimension, int) or not 1 <= dimension <= 20_000:
            raise Rejected(400, f"dimension must be 1-20000, got {dimension!r}")
        if metric not in METRICS:
            raise Rejected(400, f"metric must be one of {METRICS}, got {metric!r}")
        tags = body.get("tags")
        if tags is not None:
            _check_tags(tags)
        deployment = body.get("deployment", {})
        index = IndexState(
            name=name,
            dimension=dimension,
            metric=metric,
            cloud=deployment.get("cloud", "aws"),
            region=deployment.get("region", "us-east-1"),
            tags=dict(tags) if tags else None,
            describes_until_ready=self.describes_until_ready,
        )
        index.server = self._serve(index)
        self.indexes[name] = index
        return index

    # --- data plane ----------------------------------------------------------------------

    def _data_plane(self, index: IndexState, method: str, path: str, query: str, body: Any) -> Any:
        if (method, path) == ("POST", "/vectors/upsert"):
            return self._upsert(index, body)
        if (method, path) == ("POST", "/query"):
            return self._query(index, body)
        if (method, path) == ("GET", "/vectors/fetch"):
            params = parse_qs(query, keep_blank_values=True)
            namespace = params.get("namespace", [""])[0]
            return self._fetch(index, params.get("ids", []), namespace)
        if (method, path) == ("GET", "/vectors/list"):
            return self._list(index, parse_qs(query, keep_blank_values=True))
        if (method, path) == ("POST", "/vectors/delete"):
            return self._delete(index, body)
        if (method, path) == ("POST", "/describe_index_stats"):
            namespaces = {
                (ns or DEFAULT_NAMESPACE): {"vectorCount": len(records)}
                for ns, records in index.data.items()
                if records
            }
            return {
                "namespaces": namespaces,
                "dimension": index.dimension,
                "indexFullness": 0.0,
                "totalVectorCount": sum(n["vectorCount"] for n in namespaces.values()),
                "metric": index.metric,
                "vectorType": "dense",
            }
        raise Rejected(404, f"no route {method} {path}", grpc_code=5)

    def _upsert(self, index: IndexState, body: Any) -> Any:
        vectors = body.get("vectors")
        if not isinstance(vectors, list) or not vectors:
            raise Rejected(400, "vectors must be a non-empty array")
        if len(vectors) > MAX_UPSERT_RECORDS:
            raise Rejected(
                400, f"Batch size {len(vectors)} exceeds the maximum of {MAX_UPSERT_RECORDS}"
            )
        staged = []
        for i, vector in enumerate(vectors):
            record_id = vector.get("id")
            _check_id(record_id, f"vectors[{i}].id")
            values = vector.get("values")
            if not isinstance(values, list) or not all(_is_number(v) for v in values):
                raise Rejected(400, f"vectors[{i}].values must be an array of numbers")
            if len(values) != index.dimension:
                raise Rejected(
                    400,
                    f"Vector dimension {len(values)} does not match the dimension of the "
                    f"index {index.dimension}",
                )
            array = np.asarray(values, dtype=np.float32)
            if not array.any():
                raise Rejected(400, "Dense vectors must contain at least one non-zero value")
            staged.append((record_id, array, _check_metadata(vector.get("metadata"), i)))
        namespace = _namespace(body.get("namespace", ""))
        records = index.data.setdefault(namespace, {})
        for record_id, array, metadata in staged:
            records[record_id] = (array, metadata)
        return {"upsertedCount": len(staged)}

    def _query(self, index: IndexState, body: Any) -> Any:
        top_k = body.get("topK")
        if not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise Rejected(400, f"topK must be 1-{MAX_TOP_K}, got {top_k!r}")
        namespace = _namespace(body.get("namespace", ""))
        records = index.data.get(namespace, {})
        if ("vector" in body) == ("id" in body):
            raise Rejected(400, "exactly one of vector and id must be given")
        if "id" in body:
            if body["id"] not in records:
                return {"matches": [], "namespace": namespace, "usage": {"readUnits": 1}}
            query = records[body["id"]][0]
        else:
            query = np.asarray(body["vector"], dtype=np.float32)
            if query.shape != (index.dimension,):
                raise Rejected(
                    400,
                    f"Query vector dimension {query.size} does not match the dimension of "
                    f"the index {index.dimension}",
                )
        condition = body.get("filter")
        if condition is not None:
            validate_filter(condition)
        candidates = [
            (record_id, values, metadata)
            for record_id, (values, metadata) in records.items()
            if condition is None or evaluate(condition, metadata)
        ]
        scored = sorted(
            ((_score(index.metric, query, values), record_id, values, metadata)
             for record_id, values, metadata in candidates),
            key=lambda match: -match[0],
        )[:top_k]  # fmt: skip
        matches = []
        for score, record_id, values, metadata in scored:
            match: dict[str, Any] = {"id": record_id, "score": score}
            if body.get("includeValues"):
                match["values"] = values.tolist()
            if body.get("includeMetadata") and metadata:
                match["metadata"] = metadata
            matches.append(match)
        result = {"matches": matches, "namespace": namespace, "usage": {"readUnits": 1}}
        if len(json.dumps(result)) > MAX_RESULT_BYTES:
            raise Rejected(
                400,
                "Query result size exceeds the 4MB limit; lower top_k or leave out values "
                "or metadata",
            )
        return result

    def _fetch(self, index: IndexState, ids: list[str], namespace: str) -> Any:
        if not ids:
            raise Rejected(400, "ids must not be empty")
        if len(ids) > MAX_IDS:
            raise Rejected(400, f"at most {MAX_IDS} ids per fetch, got {len(ids)}")
        records = index.data.get(namespace, {})
        found = {}
        for record_id in ids:
            if record_id in records:
                values, metadata = records[record_id]
                found[record_id] = {"id": record_id, "values": values.tolist()}
                if metadata:
                    found[record_id]["metadata"] = metadata
        return {"vectors": found, "namespace": namespace, "usage": {"readUnits": 1}}

    def _list(self, index: IndexState, params: Mapping[str, list[str]]) -> Any:
        """Ids in sorted order, `limit` at a time; the token is the last id given, opaque."""
        namespace = _namespace(params.get("namespace", [""])[0])
        prefix = params.get("prefix", [""])[0]
        if len(prefix) > MAX_ID_LENGTH or not prefix.isascii():
            raise Rejected(400, f"prefix must be up to {MAX_ID_LENGTH} ASCII characters")
        raw_limit = params.get("limit", [str(MAX_LIST_LIMIT)])[0]
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
            raise Rejected(400, f"limit must be 1-{MAX_LIST_LIMIT}, got {raw_limit!r}")
        after = ""
        if "paginationToken" in params:
            try:
                after = base64.urlsafe_b64decode(params["paginationToken"][0]).decode("ascii")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise Rejected(400, "Invalid pagination token") from None
        ids = sorted(i for i in index.data.get(namespace, {}) if i.startswith(prefix) and i > after)
        page = ids[: int(raw_limit)]
        answer: dict[str, Any] = {
            "vectors": [{"id": i} for i in page],
            "namespace": namespace,
            "usage": {"readUnits": 1},
        }
        if len(ids) > len(page):
            token = base64.urlsafe_b64encode(page[-1].encode("ascii")).decode("ascii")
            answer["pagination"] = {"next": token}
        return answer

    def _delete(self, index: IndexState, body: Any) -> Any:
        selectors = [k for k in ("ids", "deleteAll", "filter") if body.get(k) not in (None, False)]
        if len(selectors) != 1:
            raise Rejected(400, "exactly one of ids, deleteAll and filter must be given")
        namespace = _namespace(body.get("namespace", ""))
        if namespace not in index.data:
            # Pinecone answers a delete in a namespace it does not have with 404.
            raise Rejected(404, "Namespace not found", grpc_code=5)
        records = index.data[namespace]
        if selectors == ["ids"]:
            ids = body["ids"]
            if len(ids) > MAX_IDS:
                raise Rejected(400, f"at most {MAX_IDS} ids per delete, got {len(ids)}")
            for record_id in ids:
                records.pop(record_id, None)
        elif selectors == ["deleteAll"]:
            records.clear()
        else:
            validate_filter(body["filter"])
            for record_id in [r for r, (_, md) in records.items() if evaluate(body["filter"], md)]:
                del records[record_id]
        if not records:
            del index.data[namespace]
        return {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, each answer waits out the
    # client's delayed ACK (about 40 ms).
    disable_nagle_algorithm = True
    owner: PineconeStandIn
    target: IndexState | None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.target is not None and url.path == "/vectors/upsert" and length > MAX_UPSERT_BYTES:
            self._send(
                413,
                _error_body(
                    self.target,
                    413,
                    f"Request size {length / 1e6:.1f}MB exceeds the maximum supported size of 2MB",
                ),
                {},
            )
            return
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            self._send(400, _error_body(self.target, 400, "the body is not valid JSON"), {})
            return
        status, answer, headers = self.owner.handle(
            self.target, self.command, url.path, url.query, body, self.headers.get("Api-Key", "")
        )
        self._send(status, answer, headers)

    def _send(self, status: int, answer: Any, headers: dict[str, str]) -> None:
        payload = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    # http.server looks handlers up by these names.
    do_GET = do_POST = do_DELETE = do_PATCH = _dispatch  # noqa: N815


def _close(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


def _error_body(index: IndexState | None, status: int, message: str, *, code: int = 3) -> Any:
    if index is None:  # the control plane's shape
        name = HTTPStatus(status).name if status in HTTPStatus._value2member_map_ else "UNKNOWN"
        return {"error": {"code": name, "message": message}, "status": status}
    return {"code": code, "message": message, "details": []}


def _namespace(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 512 or not value.isascii():
        raise Rejected(400, "namespace must be up to 512 ASCII characters")
    return "" if value == DEFAULT_NAMESPACE else value


def _check_id(value: Any, where: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LENGTH or not value.isascii():
        raise Rejected(400, f"{where} must be 1-{MAX_ID_LENGTH} ASCII characters")


def _check_tags(tags: Any) -> None:
    if not isinstance(tags, dict) or len(tags) > 20:
        raise Rejected(400, "tags must be an object of at most 20 entries")
    for key, value in tags.items():
        if not TAG_KEY.match(key):
            raise Rejected(400, f"tag key {key!r} must be 1-80 letters, digits, '_' or '-'")
        if not isinstance(value, str) or len(value) > 120 or not value.isascii():
            raise Rejected(400, f"tag value of {key!r} must be 0-120 ASCII characters")
        if not value.isprintable():
            raise Rejected(400, f"tag value of {key!r} must be printable")


def _check_metadata(metadata: Any, i: int) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise Rejected(400, f"vectors[{i}].metadata must be an object")
    # Pinecone counts the UTF-8 bytes of the JSON, not its ASCII-escaped form.
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise Rejected(400, f"Metadata size of vectors[{i}] exceeds the limit of 40960 bytes")
    clean: dict[str, Any] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise Rejected(400, f"Metadata value for field {key!r} must be a list of strings")
        elif isinstance(value, dict):
            raise Rejected(
                400,
                f"Metadata value for field {key!r} must be a string, number, boolean or "
                "list of strings, got an object",
            )
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, str | bool):
            raise Rejected(400, f"Metadata value for field {key!r} has an unsupported type")
        clean[key] = value
    return clean


def _score(metric: str, query: np.ndarray, values: np.ndarray) -> float:
    q, v = query.astype(np.float64), values.astype(np.float64)
    if metric == "cosine":
        # Pinecone computes and answers scores in float32.
        return float(np.float32(q @ v / (np.linalg.norm(q) * np.linalg.norm(v))))
    if metric == "dotproduct":
        return float(q @ v)
    return float(np.sum((q - v) ** 2))


# --- Pinecone's filter language, written from its documentation ------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_filter(condition: Any) -> None:
    if not isinstance(condition, dict) or not condition:
        raise Rejected(400, "filter must be a non-empty object")
    for key, value in condition.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise Rejected(400, f"{key} must be a non-empty array")
            for part in value:
                validate_filter(part)
        elif key.startswith("$"):
            raise Rejected(400, f"unknown top-level operator {key}")
        elif isinstance(value, dict):
            if not value:
                raise Rejected(400, f"the filter on {key!r} has no operator")
            for op, operand in value.items():
                _validate_operator(key, op, operand)
        else:
            _validate_operator(key, "$eq", value)


def _validate_operator(key: str, op: str, operand: Any) -> None:
    if op in ("$eq", "$ne"):
        ok = isinstance(operand, str | bool) or _is_number(operand)
    elif op in ("$gt", "$gte", "$lt", "$lte"):
        ok = _is_number(operand)
    elif op in ("$in", "$nin"):
        ok = (
            isinstance(operand, list)
            and bool(operand)
            and all(isinstance(x, str) or _is_number(x) for x in operand)
        )
    elif op == "$exists":
        ok = isinstance(operand, bool)
    else:
        raise Rejected(400, f"unknown operator {op} on {key!r}")
    if not ok:
        raise Rejected(400, f"invalid value for {op} on {key!r}: {operand!r}")


def _equal(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    if isinstance(stored, str) or isinstance(wanted, str):
        return bool(stored == wanted)
    return float(stored) == float(wanted)


def evaluate(condition: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    """Does a record with `metadata` match the (validated) Pinecone filter?"""
    for key, value in condition.items():
        if key == "$and":
            ok = all(evaluate(part, metadata) for part in value)
        elif key == "$or":
            ok = any(evaluate(part, metadata) for part in value)
        elif isinstance(value, dict):
            ok = all(_compare(metadata, key, op, operand) for op, operand in value.items())
        else:
            ok = _compare(metadata, key, "$eq", value)
        if not ok:
            return False
    return True


def _compare(metadata: Mapping[str, Any], key: str, op: str, operand: Any) -> bool:
    if op == "$exists":
        return bool((key in metadata) == operand)
    if key not in metadata:
        return False  # a missing field matches no comparison, $ne and $nin included
    stored = metadata[key]
    elements = stored if isinstance(stored, list) else [stored]
    if op in ("$eq", "$in"):
        wanted = operand if op == "$in" else [operand]
        return any(_equal(e, w) for e in elements for w in wanted)
    if op in ("$ne", "$nin"):
        unwanted = operand if op == "$nin" else [operand]
        return not any(_equal(e, w) for e in elements for w in unwanted)
    if not _is_number(stored):
        return False
    bounds = {"$gt": float.__gt__, "$gte": float.__ge__, "$lt": float.__lt__, "$lte": float.__le__}
    return bounds[op](float(stored), float(operand))
