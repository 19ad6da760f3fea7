"""`imagesearch export` / `import` between the local store and Pinecone (the stand-in),
in both directions: every record, vector (bit for bit) and metadata value survives."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from imagesearch_client import ImageRecord, ImageSearchClient, VectorRecord
from imagesearch_client.cli import run
from imagesearch_client.transfer import META_KEY, read_info

from search_service.app import SearchApp
from tests.support.fixtures import StartSearch, on_pinecone
from tests.support.imagegen import encode, picture
from tests.support.pinecone_standin import PineconeStandIn

Snapshot = dict[tuple[str, str], tuple[bytes, dict[str, object]]]


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(run, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fill(app: SearchApp, dimension: int) -> None:
    rng = np.random.default_rng(11)
    with ImageSearchClient(app.address, timeout_s=30) as client:
        for namespace, count in (("", 180), ("cats", 75)):
            records = [
                VectorRecord(
                    f"{namespace or 'default'}-{i:03d}",
                    rng.normal(size=dimension).tolist(),
                    {
                        "label": ["cat", "dog", "bird"][i % 3],
                        "tags": [f"t{i % 5}", "all"],
                        "flag": i % 2 == 0,
                        "score": i / 7,
                        "quote": 'say "hi" \\ naïve',
                    },
                )
                for i in range(count)
            ]
            for start in range(0, count, 100):
                chunk = records[start : start + 100]
                assert all(o.ok for o in client.upsert_vectors(chunk, namespace=namespace))
        # Images too: their vectors come from embed_service, not from the caller.
        images = [
            ImageRecord(encode(picture(c), "PNG"), metadata={"src": c}) for c in ("red", "blue")
        ]
        assert all(o.ok for o in client.upsert_images(images, namespace="cats"))


def snapshot(app: SearchApp) -> Snapshot:
    out: Snapshot = {}
    with ImageSearchClient(app.address, timeout_s=30) as client:
        for namespace in client.stats().namespaces:
            for page in client.iter_pages(
                namespace=namespace, page_size=1000, include_metadata=True, include_values=True
            ):
                for r in page.records:
                    vector = np.asarray(r.values, dtype=np.float32).tobytes()
                    out[(namespace, r.id)] = (vector, r.metadata)
    return out


async def move(
    capsys: pytest.CaptureFixture[str], source: SearchApp, target: SearchApp, file: Path
) -> None:
    code, out, err = await cli(capsys, "--target", source.address, "export", str(file), "--json")
    assert code == 0, err
    assert json.loads(out)["records"] == 257
    code, out, err = await cli(capsys, "--target", target.address, "import", str(file), "--json")
    assert code == 0, err
    assert json.loads(out)["stored"] == 257


async def test_local_to_pinecone_and_back_keeps_every_record_bit_for_bit(
    capsys: pytest.CaptureFixture[str], start_search_app: StartSearch, tmp_path: Path
) -> None:
    local = await start_search_app(tmp_path / "local")
    dimension = (await local.embed.model_info()).dimension
    await asyncio.to_thread(fill, local, dimension)
    original = await asyncio.to_thread(snapshot, local)
    assert len(original) == 257
    with PineconeStandIn() as standin:
        pinecone = await start_search_app(tmp_path / "unused", **on_pinecone(standin))
        await move(capsys, local, pinecone, tmp_path / "local.parquet")
        assert await asyncio.to_thread(snapshot, pinecone) == original

        info = read_info(tmp_path / "local.parquet")
        assert (info.store, info.dimension, info.rows) == ("local", dimension, 257)
        assert info.namespaces == {"__default__": 180, "cats": 77}
        table = pq.read_table(tmp_path / "local.parquet")
        assert table.schema.field("values").type.list_size == dimension

        back = await start_search_app(tmp_path / "back")
        await move(capsys, pinecone, back, tmp_path / "pinecone.parquet")
        assert await asyncio.to_thread(snapshot, back) == original
        _, out, _ = await cli(capsys, "--target", back.address, "stats", "--json")
        assert json.loads(out)["namespaces"] == {"__default__": 180, "cats": 77}


async def test_an_import_runs_again_or_resumes_without_duplicates_or_gaps(
    capsys: pytest.CaptureFixture[str], start_search_app: StartSearch, tmp_path: Path
) -> None:
    source = await start_search_app(tmp_path / "source")
    await asyncio.to_thread(fill, source, (await source.embed.model_info()).dimension)
    file = tmp_path / "all.parquet"
    assert (await cli(capsys, "--target", source.address, "export", str(file)))[0] == 0
    target = await start_search_app(tmp_path / "target")
    # As if an earlier run had stopped after 100 rows: --skip 100 picks up from there.
    code, out, err = await cli(capsys, "--target", target.address, "import", str(file),
                               "--skip", "100", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["stored"] == 157
    for _ in range(2):  # and a full run, twice, on top: overwrites, adds nothing twice
        code, _, err = await cli(capsys, "--target", target.address, "import", str(file))
        assert code == 0, err
    assert await asyncio.to_thread(snapshot, target) == await asyncio.to_thread(snapshot, source)


async def test_a_file_of_another_model_is_refused_before_anything_is_written(
    capsys: pytest.CaptureFixture[str], start_search_app: StartSearch, tmp_path: Path
) -> None:
    source = await start_search_app(tmp_path / "source")
    await asyncio.to_thread(fill, source, (await source.embed.model_info()).dimension)
    file = tmp_path / "all.parquet"
    assert (await cli(capsys, "--target", source.address, "export", str(file)))[0] == 0
    table = pq.read_table(file)
    info = json.loads(table.schema.metadata[META_KEY])
    info["model_fingerprint"] = "0" * 32
    forged = tmp_path / "other-model.parquet"
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(info).encode()}), forged)

    for target in (source, await start_search_app(tmp_path / "empty")):
        before = await asyncio.to_thread(snapshot, target)
        code, _, err = await cli(capsys, "--target", target.address, "import", str(forged))
        assert code == 1
        assert "FAILED_PRECONDITION (MODEL_MISMATCH)" in err
        assert "0" * 32 in err
        assert await asyncio.to_thread(snapshot, target) == before

    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    code, _, err = await cli(
        capsys, "--target", source.address, "import", str(tmp_path / "junk.parquet")
    )
    assert code == 1
    assert "not a readable Parquet file" in err


def with_row_broken(table: pa.Table, row: int, column: str, value: object) -> pa.Table:
    """`table` with one cell of `column` replaced (None: a null)."""
    cells = table.column(column).to_pylist()
    cells[row] = value
    field = table.schema.field(column)
    kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
    fixed = pa.field(column, kind, nullable=True)
    index = table.schema.get_field_index(column)
    return table.set_column(index, fixed, pa.array(cells, type=kind)).replace_schema_metadata(
        table.schema.metadata
    )


async def test_a_hostile_file_is_refused_at_its_first_bad_row_and_what_precedes_it_is_stored(
    capsys: pytest.CaptureFixture[str], start_search_app: StartSearch, tmp_path: Path
) -> None:
    source = await start_search_app(tmp_path / "source")
    dimension = (await source.embed.model_info()).dimension
    await asyncio.to_thread(fill, source, dimension)
    file = tmp_path / "all.parquet"
    assert (await cli(capsys, "--target", source.address, "export", str(file)))[0] == 0
    table = pq.read_table(file)
    vectors = table.column("values").to_pylist()
    cases = {
        "null vector": (with_row_broken(table, 7, "values", None), 7, "has no values (null)"),
        "null in a vector": (
            with_row_broken(table, 9, "values", [None, *vectors[9][1:]]), 9,
            "has a null in values[0]",
        ),
        "metadata not JSON": (
            with_row_broken(table, 11, "metadata", "{nope"), 11, "has metadata that is not JSON"
        ),
        "metadata a list": (
            with_row_broken(table, 3, "metadata", "[1, 2]"), 3,
            "has metadata that is not a JSON object",
        ),
        "null id": (with_row_broken(table, 5, "id", None), 5, "has no id (null)"),
    }  # fmt: skip
    source_rows = await asyncio.to_thread(snapshot, source)
    ids = table.column("id").to_pylist()
    namespaces = [ns or "__default__" for ns in table.column("namespace").to_pylist()]
    for name, (broken, row, words) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(broken, path)
        target = await start_search_app(tmp_path / name)
        code, _, err = await cli(capsys, "--target", target.address, "import", str(path))
        assert code == 1, (name, err)
        assert f"row {row} {words}" in err, (name, err)
        assert f"every row before {row} is stored" in err, (name, err)
        assert "Traceback" not in err
        stored = await asyncio.to_thread(snapshot, target)
        # Each row before the bad one is stored under its own id with its own vector.
        expected = {(namespaces[i], ids[i]) for i in range(row)}
        assert set(stored) == expected, name
        for key in expected:
            assert stored[key] == source_rows[key], (name, key)

    wrong_type = table.set_column(
        table.schema.get_field_index("id"), "id", pa.array(range(table.num_rows), pa.int64())
    ).replace_schema_metadata(table.schema.metadata)
    pq.write_table(wrong_type, tmp_path / "wrong-type.parquet")
    code, _, err = await cli(
        capsys, "--target", source.address, "import", str(tmp_path / "wrong-type.parquet")
    )
    assert code == 1
    assert "column 'id' holds int64, not string" in err
    assert "Traceback" not in err
