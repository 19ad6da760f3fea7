"""Several embed_service replicas behind one EMBED_TARGET: spread, failover, one model.

search_service dials `ipv4:A,B` with round_robin and client-side health checking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagesearch_client import ImageRecord, ImageSearchClient

from embed_service.app import EmbedApp
from search_service.app import SearchApp
from search_service.embed_client import channel_authority
from tests.support.certs import Pki, make_pki
from tests.support.imagegen import PALETTE, encode, picture
from tests.support.stack import InThread, embed_settings, search_settings, service_process
from tests.support.tiny_clip import build_clip

HANDLED = "grpc_server_handled_total"


def embedded_images(app: EmbedApp) -> float:
    labels = {"grpc_type": "unary", "grpc_service": "imagesearch.v1.EmbedService",
              "grpc_method": "EmbedImages", "grpc_code": "OK"}  # fmt: skip
    return app.registry.get_sample_value(HANDLED, labels) or 0.0


def folder_of(root: Path, count: int) -> Path:
    colours = list(PALETTE)
    for n in range(count):
        image = picture(colours[n % len(colours)], shape=n % 7, size=(48 + n % 40, 40 + n // 40))
        (root / f"img-{n:03d}.png").parent.mkdir(parents=True, exist_ok=True)
        (root / f"img-{n:03d}.png").write_bytes(encode(image, "PNG"))
    return root


async def test_a_replica_killed_mid_index_loses_nothing_and_the_survivor_takes_the_rest(
    clip_dir: Path, tmp_path: Path
) -> None:
    survivor = EmbedApp(embed_settings(clip_dir))
    await survivor.start()
    await survivor.load()
    env = {"EMBED_MODEL": str(clip_dir), "EMBED_ADDR": "127.0.0.1:0", "EMBED_PRECISION": "fp32"}
    with contextlib.ExitStack() as running:
        victim, victim_address = await asyncio.to_thread(
            running.enter_context, service_process("embed_service", env, ready="ready")
        )
        search = SearchApp(
            search_settings(tmp_path / "data", f"ipv4:{victim_address},{survivor.address}")
        )
        await search.start()
        await search.wait_serving()
        folder = folder_of(tmp_path / "images", 200)
        cli = [sys.executable, "-m", "imagesearch_client.cli", "--target", search.address]
        index = await asyncio.create_subprocess_exec(
            *cli, "index", str(folder), "--quiet", "--json",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        # Kill the other replica once the index is well under way.
        # The CLI is another process: nothing here is told of its progress but the store.
        while (await search.store.stats()).total < 60:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        before_kill = embedded_images(survivor)
        victim.send_signal(signal.SIGKILL)
        out, err = await index.communicate()
        try:
            assert index.returncode == 0, err.decode()
            assert '"stored": 200' in out.decode(), out.decode()
            assert '"failures": []' in out.decode(), out.decode()
            assert (await search.store.stats()).total == 200
            # Calls went to both before the kill, and the survivor took what was left.
            assert before_kill > 0
            assert embedded_images(survivor) > before_kill
        finally:
            await search.stop(0)
            await survivor.stop(0)


async def test_a_replica_running_another_model_is_never_stored_from_and_is_named(
    clip_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    right = EmbedApp(embed_settings(clip_dir))
    other = EmbedApp(embed_settings(build_clip(tmp_path / "other-clip", seed=1)))
    for app in (right, other):
        await app.start()
        await app.load()
    # The store is made by the right model first; then both replicas serve it.
    data = tmp_path / "data"
    alone = SearchApp(search_settings(data, right.address))
    await alone.start()
    await alone.wait_serving()
    with ImageSearchClient(alone.address, timeout_s=20) as sync_client:
        await InThread(sync_client).upsert_images([ImageRecord(image=encode(picture("red")))])
    await alone.stop(0)

    search = SearchApp(search_settings(data, f"ipv4:{right.address},{other.address}"))
    await search.start()
    await search.wait_serving()
    try:
        images = [encode(picture(c, shape=s), "PNG") for c in PALETTE for s in range(2)]
        records = [ImageRecord(image=image, id=f"r{i}") for i, image in enumerate(images)]
        with ImageSearchClient(search.address, timeout_s=20) as sync_client:
            client = InThread(sync_client)
            # One call each: round_robin alternates, so the other replica is asked too.
            for record in records:
                outcomes = await client.upsert_images([record])
                assert all(o.ok for o in outcomes), outcomes
            stored = await client.fetch([r.id for r in records])
        assert embedded_images(other) > 0, "the other replica was never asked"
        assert right.engine is not None
        expected = [result.vector for result in await right.engine.embed_images(images)]
        for got, want in zip(stored, expected, strict=True):
            assert want is not None
            assert np.allclose(got.values, want, atol=1e-5), got.id
        assert other.address in caplog.text
        assert "its answer is dropped" in caplog.text
    finally:
        await search.stop(0)
        for app in (right, other):
            await app.stop(0)


def tls_embed_env(clip_dir: Path, pki: Pki) -> dict[str, str]:
    return {
        "EMBED_MODEL": str(clip_dir), "EMBED_ADDR": "127.0.0.1:0", "EMBED_PRECISION": "fp32",
        "EMBED_TLS_CERT": str(pki.server.cert), "EMBED_TLS_KEY": str(pki.server.key),
        "EMBED_TLS_CLIENT_CA": str(pki.ca), "EMBED_TOKENS": "replica-token",
    }  # fmt: skip


def tls_search_env(target: str, data: Path, pki: Pki, ca: Path) -> dict[str, str]:
    return {
        "SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": target, "DATA_DIR": str(data),
        "VECTOR_STORE": "local", "EMBED_TARGET_CA": str(ca),
        "EMBED_TARGET_CERT": str(pki.client.cert), "EMBED_TARGET_KEY": str(pki.client.key),
        "EMBED_TOKEN": "replica-token", "SEARCH_TLS_CERT": str(pki.server.cert),
        "SEARCH_TLS_KEY": str(pki.server.key), "SEARCH_TLS_CLIENT_CA": str(pki.ca),
        "SEARCH_TOKENS": "search-token",
    }  # fmt: skip


def test_two_tls_replicas_behind_one_ipv4_target_serve_and_survive_a_kill(
    clip_dir: Path, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    with contextlib.ExitStack() as running:
        replicas = [
            running.enter_context(
                service_process("embed_service", tls_embed_env(clip_dir, pki), ready="ready")
            )
            for _ in range(2)
        ]
        target = "ipv4:" + ",".join(address for _, address in replicas)
        env = tls_search_env(target, tmp_path / "data", pki, pki.ca)
        _, address = running.enter_context(
            service_process("search_service", env, ready="search_service ready")
        )
        client = running.enter_context(
            ImageSearchClient(
                address, timeout_s=30, tls_ca=pki.ca, tls_cert=pki.client.cert,
                tls_key=pki.client.key, token="search-token",
            )
        )  # fmt: skip
        stored = client.upsert_images([ImageRecord(encode(picture("red"), "PNG"), id="red")])
        assert [o.ok for o in stored] == [True]
        assert [m.id for m in client.query(text="a red square", top_k=1)] == ["red"]
        replicas[0][0].send_signal(signal.SIGKILL)
        replicas[0][0].wait(10)
        for _ in range(6):  # round robin would have sent some of these to the dead one
            assert [m.id for m in client.query(text="a red square", top_k=1)] == ["red"]


def test_a_replica_whose_certificate_does_not_verify_is_named_in_the_log_within_seconds(
    clip_dir: Path, tmp_path: Path
) -> None:
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other", "other")
    log = tmp_path / "search.log"
    with service_process("embed_service", tls_embed_env(clip_dir, pki), ready="ready") as (
        _,
        embed,
    ):
        env = tls_search_env(f"ipv4:{embed}", tmp_path / "data", pki, other.ca)
        began = time.monotonic()
        with service_process("search_service", env, ready="cannot be reached", log=log) as (
            _,
            search,
        ):
            took = time.monotonic() - began
            credentials = grpc.ssl_channel_credentials(
                pki.ca.read_bytes(), pki.client.key.read_bytes(), pki.client.cert.read_bytes()
            )
            with grpc.secure_channel(search, credentials) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    line = next(line for line in log.read_text().splitlines() if "cannot be reached" in line)
    assert took < 15, took
    assert embed in line
    assert "CERTIFICATE_VERIFY_FAILED" in line or "handshake" in line.lower(), line
    assert "NOT_SERVING" in line


@pytest.mark.parametrize(
    ("target", "override", "authority"),
    [
        ("127.0.0.1:50051", None, None),
        ("dns:///embed.internal:50051", None, None),
        ("ipv4:127.0.0.1:50061,127.0.0.1:50062", None, "127.0.0.1:50061"),
        ("ipv6:[::1]:50061,[::1]:50062", None, "[::1]:50061"),
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051", None, None),
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051", "embed.internal", "embed.internal"),
    ],
)
def test_a_list_of_addresses_on_one_host_verifies_against_that_host(
    target: str, override: str | None, authority: str | None
) -> None:
    assert channel_authority(target, override) == authority
