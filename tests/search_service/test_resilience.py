"""search_service when things go wrong: SIGKILL mid-ingest, embed_service down and back."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagesearch_client import ImageRecord, ImageSearchClient, Unavailable

from embed_service.app import EmbedApp
from tests.support.fixtures import StartSearch
from tests.support.imagegen import PALETTE, encode, picture
from tests.support.stack import InThread, embed_settings, service_process, serving_embed


def search_env(data_dir: Path, embed_target: str) -> dict[str, str]:
    return {
        "SEARCH_ADDR": "127.0.0.1:0",
        "EMBED_TARGET": embed_target,
        "DATA_DIR": str(data_dir),
        "VECTOR_STORE": "local",
        # Small, so index builds (and their replay) are under way when the kill lands.
        "SEARCH_INDEX_THRESHOLD": "24",
    }


def many_images() -> Iterator[list[ImageRecord]]:
    """An endless supply of distinct small images, in batches of 8."""
    n = 0
    colours = list(PALETTE)
    while True:
        batch = []
        for _ in range(8):
            image = picture(colours[n % len(colours)], shape=n % 9, size=(40 + n % 50, 40))
            batch.append(ImageRecord(image=encode(image, "PNG"), id=f"img-{n}"))
            n += 1
        yield batch


@pytest.mark.slow
async def test_a_sigkilled_search_service_keeps_every_acknowledged_upsert(
    embed_app: EmbedApp, tmp_path: Path
) -> None:
    log = tmp_path / "search.log"
    env = search_env(tmp_path / "data", embed_app.address)
    # Only up to "listening" on this loop: search_service waits for embed_service after.
    ready = "search_service listening"
    acknowledged: list[str] = []
    with service_process("search_service", env, ready=ready, log=log) as (process, address):

        def ingest_until_killed() -> None:
            with ImageSearchClient(address, timeout_s=30) as client:
                client.wait_ready()
                try:
                    for outcomes in client.ingest(many_images(), window=3):
                        acknowledged.extend(o.id for o in outcomes if o.ok)
                        if len(acknowledged) >= 120:
                            process.send_signal(signal.SIGKILL)
                except Unavailable:
                    pass  # the kill

        await asyncio.to_thread(ingest_until_killed)
        assert process.wait(10) == -signal.SIGKILL
    assert len(acknowledged) >= 120

    with (
        service_process("search_service", env, ready=ready, log=log) as (_, address),
        ImageSearchClient(address, timeout_s=30) as client,
    ):
        await asyncio.to_thread(client.wait_ready)
        found: set[str] = set()
        for start in range(0, len(acknowledged), 500):
            chunk = acknowledged[start : start + 500]
            found.update(r.id for r in await asyncio.to_thread(client.fetch, chunk))
        assert found == set(acknowledged), log.read_text()
        stats = await asyncio.to_thread(client.stats)
        assert stats.total >= len(acknowledged)
        top = await asyncio.to_thread(client.query, id=acknowledged[-1], top_k=1)
        assert top[0].id == acknowledged[-1]
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.mark.slow
async def test_embed_service_down_gives_unavailable_then_search_recovers_by_itself(
    clip_dir: Path, start_search_app: StartSearch
) -> None:
    embed = EmbedApp(embed_settings(clip_dir))
    await embed.start()
    await embed.load()
    port = embed.address.rsplit(":", 1)[1]
    search = await start_search_app(embed_target=embed.address, embed_timeout_s=5.0)
    with ImageSearchClient(search.address, timeout_s=20) as sync_client:
        client = InThread(sync_client)
        assert (await client.query(text="a red square", top_k=1)) == []

        await embed.stop(0)
        with pytest.raises(Unavailable) as caught:
            await client.query(text="a red square", top_k=1)
        # search_service answered itself, within its own deadline, before the client's ran out.
        assert caught.value.code == "UNAVAILABLE"
        assert caught.value.reason == "EMBED_UNAVAILABLE"
        assert "EMBED_TARGET" in caught.value.message

        async with serving_embed(clip_dir, addr=f"127.0.0.1:{port}") as embed:
            outcomes = await client.upsert_images(
                [ImageRecord(image=encode(picture("blue"), "PNG"), id="after")]
            )
            assert [o.ok for o in outcomes] == [True]
            assert [m.id for m in await client.query(text="anything", top_k=1)] == ["after"]
