"""search_service with VECTOR_STORE=pinecone, end to end against the stand-in.

The API suite (test_search_api.py) and the CLI suite already run on this store too;
these are what only a remote store brings: its index made by another model or of
another shape, its credentials, and it being out of reach.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from imagesearch_client import (
    FailedPrecondition,
    ImageSearchClient,
    NotFound,
    Unavailable,
    VectorRecord,
)

from embed_service.app import EmbedApp
from search_service.errors import StoreMisconfigured
from search_service.stores.pinecone.packing import TAG_FINGERPRINT, TAG_MODEL
from tests.support.fixtures import StartSearch, on_pinecone
from tests.support.pinecone_standin import PineconeStandIn
from tests.support.stack import InThread


async def test_an_index_filled_by_another_model_refuses_writes_and_queries(
    start_search_app: StartSearch, standin: PineconeStandIn
) -> None:
    app = await start_search_app(**on_pinecone(standin))
    dimension = standin.indexes["image-search"].dimension
    tags = {TAG_MODEL: "someone/else", TAG_FINGERPRINT: "0" * 32}
    standin.create("other", dimension=dimension, tags=tags)
    other = await start_search_app(**on_pinecone(standin, index="other"))
    vector = [1.0] * dimension
    with ImageSearchClient(other.address, timeout_s=30) as sync:
        client = InThread(sync)
        with pytest.raises(FailedPrecondition, match="someone/else") as refused:
            await client.upsert_vectors([VectorRecord(id="a", values=vector)])
        assert refused.value.reason == "MODEL_MISMATCH"
        with pytest.raises(FailedPrecondition, match="PINECONE_INDEX"):
            await client.query(text="a cat")
        # Reads still work: what is stored can be looked at and taken out.
        assert (await client.stats()).total == 0
    with ImageSearchClient(app.address, timeout_s=30) as sync:
        outcomes = await InThread(sync).upsert_vectors([VectorRecord(id="a", values=vector)])
        assert [o.ok for o in outcomes] == [True]


async def test_pinecone_out_of_reach_is_unavailable_after_retries(
    start_search_app: StartSearch, standin: PineconeStandIn, backoff: list[float]
) -> None:
    app = await start_search_app(**on_pinecone(standin))
    dimension = standin.indexes["image-search"].dimension
    standin.fail("/vectors/upsert", 503, times=1000)
    with ImageSearchClient(app.address, timeout_s=30) as sync:
        client = InThread(sync)
        with pytest.raises(Unavailable, match="Pinecone answered 503 after retries"):
            await client.upsert_vectors([VectorRecord(id="a", values=[1.0] * dimension)])
        assert len(backoff) == 3
        standin.heal()
        outcomes = await client.upsert_vectors([VectorRecord(id="a", values=[1.0] * dimension)])
        assert [o.ok for o in outcomes] == [True]


async def test_an_index_of_another_dimension_stops_the_app(
    start_search_app: StartSearch, standin: PineconeStandIn
) -> None:
    standin.create("image-search", dimension=3)
    with pytest.raises(StoreMisconfigured, match="dimension 3"):
        await start_search_app(**on_pinecone(standin))


def run_search_service(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "search_service"],
        env={**os.environ, "SEARCH_ADDR": "127.0.0.1:0", "VECTOR_STORE": "", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
async def test_the_process_refuses_to_start_with_a_clear_message(
    embed_app: EmbedApp, standin: PineconeStandIn, tmp_path: Path
) -> None:
    standin.create("narrow", dimension=3)
    common = {"PINECONE_HOST": standin.url, "EMBED_TARGET": embed_app.address,
              "DATA_DIR": str(tmp_path)}  # fmt: skip
    # No VECTOR_STORE: a PINECONE_API_KEY alone selects Pinecone.
    wrong_key = "pcsk_not_the_key_0123456789"
    refused = await asyncio.to_thread(
        run_search_service, {**common, "PINECONE_API_KEY": wrong_key, "PINECONE_INDEX": "narrow"}
    )
    assert refused.returncode == 2
    assert "cannot start: Pinecone refused the API key in PINECONE_API_KEY" in refused.stderr
    assert wrong_key not in refused.stderr

    narrow = await asyncio.to_thread(
        run_search_service,
        {**common, "PINECONE_API_KEY": standin.api_key, "PINECONE_INDEX": "narrow"},
    )
    assert narrow.returncode == 2
    assert "index 'narrow' has dimension 3" in narrow.stderr
    assert "Traceback" not in narrow.stderr


async def test_queries_never_create_the_index_only_a_write_does(
    start_search_app: StartSearch, standin: PineconeStandIn, backoff: list[float]
) -> None:
    standin.fail("/indexes", 503, times=1000)  # the bind at start gives up after its retries
    app = await start_search_app(**on_pinecone(standin))
    assert standin.indexes == {}
    tried = standin.count("POST", "/indexes")
    standin.heal()
    with ImageSearchClient(app.address, timeout_s=30) as sync:
        client = InThread(sync)
        dimension = 64  # the tiny model's
        assert await client.query(text="a cat") == []
        assert await client.query(vector=[1.0] * dimension) == []
        with pytest.raises(NotFound):
            await client.query(id="nothing")
        assert standin.indexes == {}
        assert standin.count("POST", "/indexes") == tried
        outcomes = await client.upsert_vectors([VectorRecord(id="a", values=[1.0] * dimension)])
        assert [o.ok for o in outcomes] == [True]
        assert list(standin.indexes) == ["image-search"]
