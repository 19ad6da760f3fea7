"""Hypothesis over import files: any rows (nulls anywhere, metadata of any text, vectors
with holes), in any batch size. Reading them either sends every row before the first bad
one, each with its own id and vector, or refuses the file whole; nothing else happens
(no IndexError, no vector moved onto another id)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagesearch_client.transfer import MalformedRow, _requests

DIM = 3

vectors = st.one_of(
    st.none(),
    st.lists(st.one_of(st.none(), st.floats(-1, 1, width=32)), min_size=DIM, max_size=DIM),
)
metadata_texts = st.one_of(
    st.none(),
    st.just("{}"),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2).map(json.dumps),
    st.text(max_size=8),
    st.sampled_from(["[1, 2]", "3", "null", '"text"', "[" * 3000]),
)
rows = st.lists(
    st.tuples(st.one_of(st.none(), st.text(min_size=1, max_size=4)), vectors, metadata_texts),
    min_size=1,
    max_size=40,
)


def write(path: Path, table_rows: list[tuple[Any, Any, Any]], chunk: int) -> None:
    table = pa.table(
        {
            "namespace": pa.array(["" for _ in table_rows], pa.string()),
            "id": pa.array([r[0] for r in table_rows], pa.string()),
            "values": pa.array([r[1] for r in table_rows], pa.list_(pa.float32(), DIM)),
            "metadata": pa.array([r[2] for r in table_rows], pa.string()),
        }
    )
    pq.write_table(table, path, row_group_size=chunk)


def good(row: tuple[Any, Any, Any]) -> bool:
    record_id, vector, text = row
    if record_id is None or vector is None or text is None or None in vector:
        return False
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table_rows=rows, chunk=st.integers(1, 16))
def test_any_file_sends_the_rows_before_its_first_bad_one_and_nothing_else(
    tmp_path: Path, table_rows: list[tuple[Any, Any, Any]], chunk: int
) -> None:
    path = tmp_path / "rows.parquet"
    write(path, table_rows, chunk)
    sent = []
    refusal: MalformedRow | None = None
    try:
        for _, batch in _requests(path, DIM, 0):
            sent.extend(batch)
    except MalformedRow as exc:
        refusal = exc
    first_bad = next((i for i, row in enumerate(table_rows) if not good(row)), None)
    if first_bad is None:
        assert refusal is None
        assert len(sent) == len(table_rows)
    else:
        assert refusal is not None
        assert refusal.row == first_bad
        assert len(sent) == first_bad
    for record, (record_id, vector, text) in zip(sent, table_rows, strict=False):
        assert record.id == record_id
        assert record.values == pytest.approx(vector)
        assert record.metadata == json.loads(text)
