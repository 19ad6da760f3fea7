"""TLS, mutual TLS and bearer tokens on both services, with real certificates.

Certificates are made per test session (a CA, server and client certificates for
127.0.0.1/localhost). Every RPC of both services is checked against tokens by walking
the service descriptors, so an RPC added later cannot be forgotten.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from imagesearch.status import reason_of, status_from_error
from imagesearch.v1 import embed_service_pb2, search_service_pb2
from imagesearch_client import ImageSearchClient, ImageSearchError, Unavailable, VectorRecord

from embed_service.app import EmbedApp
from search_service.app import SearchApp
from tests.support.certs import Pki, make_pki
from tests.support.stack import InThread, search_settings, service_process, serving_embed

TOKEN = "s3cret-read-write-token"
READ_TOKEN = "r3ad-only-token"
EMBED_TOKEN = "3mbed-token"
SECRETS = (TOKEN, READ_TOKEN, EMBED_TOKEN)
SERVICES = {
    "search": search_service_pb2.DESCRIPTOR.services_by_name["SearchService"],
    "embed": embed_service_pb2.DESCRIPTOR.services_by_name["EmbedService"],
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "imagesearch")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("other"), "other")


@pytest.fixture
async def secured(
    pki: Pki, clip_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[EmbedApp, SearchApp]]:
    """embed_service with mTLS + a token, and search_service calling it with both, itself
    serving mTLS with read-write and read-only tokens."""
    caplog.set_level(logging.DEBUG)
    embed_options = {"tls_cert": pki.server.cert, "tls_key": pki.server.key,
                     "tls_client_ca": pki.ca, "tokens": EMBED_TOKEN}  # fmt: skip
    async with serving_embed(clip_dir, **embed_options) as embed:
        search = SearchApp(
            search_settings(
                tmp_path / "data",
                embed.address,
                tls_cert=pki.server.cert,
                tls_key=pki.server.key,
                tls_client_ca=pki.ca,
                tokens=TOKEN,
                read_tokens=READ_TOKEN,
                embed_target_ca=pki.ca,
                embed_target_cert=pki.client.cert,
                embed_target_key=pki.client.key,
                embed_token=EMBED_TOKEN,
            )
        )
        await search.start()
        await search.wait_serving()
        yield embed, search
        await search.stop(0)
    for secret in SECRETS:
        assert secret not in caplog.text, "a token reached the log"


def client(search: SearchApp, pki: Pki, **overrides: object) -> ImageSearchClient:
    options: dict[str, object] = {
        "tls_ca": pki.ca, "tls_cert": pki.client.cert, "tls_key": pki.client.key, "token": TOKEN,
    }  # fmt: skip
    options.update(overrides)
    return ImageSearchClient(search.address, timeout_s=10, **options)  # type: ignore[arg-type]


async def test_the_right_certificates_and_token_work_end_to_end(
    secured: tuple[EmbedApp, SearchApp], pki: Pki
) -> None:
    _, search = secured
    with client(search, pki) as c:
        outcomes = await InThread(c).upsert_vectors([VectorRecord("v", [1.0] + [0.0] * 63)])
        assert [o.ok for o in outcomes] == [True]
        # A text query goes search_service -> embed_service over mTLS with EMBED_TOKEN.
        assert [m.id for m in await InThread(c).query(text="anything", top_k=1)] == ["v"]


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("plaintext", {"tls_ca": None, "tls_cert": None, "tls_key": None}),
        ("another CA", {"tls_ca": "OTHER"}),
        ("no client certificate", {"tls_cert": None, "tls_key": None}),
        ("a certificate of another CA", {"tls_cert": "OTHER_CERT", "tls_key": "OTHER_KEY"}),
    ],
)
async def test_tls_refuses_clients_that_cannot_prove_or_verify(
    secured: tuple[EmbedApp, SearchApp], pki: Pki, other_pki: Pki, case: str,
    overrides: dict[str, object],
) -> None:  # fmt: skip
    swap = {"OTHER": other_pki.ca, "OTHER_CERT": other_pki.client.cert,
            "OTHER_KEY": other_pki.client.key}  # fmt: skip
    overrides = {k: swap.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}
    if case == "plaintext":
        os.environ.pop("IMAGESEARCH_TLS_CA", None)
    _, search = secured
    with client(search, pki, **overrides) as c, pytest.raises(Unavailable):
        await InThread(c).stats()


async def every_rpc(
    channel: grpc.aio.Channel, service: str, metadata: tuple[tuple[str, str], ...]
) -> dict[str, tuple[grpc.StatusCode, str]]:
    """Calls every method of `service` with an empty request; (code, reason) for each."""
    descriptor = SERVICES[service]
    answers = {}
    for method in descriptor.methods:
        path = f"/{descriptor.full_name}/{method.name}"
        if method.client_streaming:
            call = channel.stream_stream(path)(iter([b""]), metadata=metadata, timeout=10)
        elif method.server_streaming:
            call = channel.unary_stream(path)(b"", metadata=metadata, timeout=10)
        else:
            call = channel.unary_unary(path)(b"", metadata=metadata, timeout=10)
        try:
            if method.client_streaming or method.server_streaming:
                async for _ in call:
                    pass
            else:
                await call
            answers[method.name] = (grpc.StatusCode.OK, "")
        except grpc.aio.AioRpcError as error:
            status = status_from_error(error)
            answers[method.name] = (error.code(), reason_of(status) if status else "")
    return answers


def secure_channel(address: str, pki: Pki) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client.key.read_bytes(), pki.client.cert.read_bytes()
    )
    return grpc.aio.secure_channel(address, credentials)


@pytest.mark.parametrize("service", ["search", "embed"])
async def test_every_rpc_needs_a_token_and_health_does_not(
    secured: tuple[EmbedApp, SearchApp], pki: Pki, service: str
) -> None:
    embed, search = secured
    address = search.address if service == "search" else embed.address
    async with secure_channel(address, pki) as channel:
        missing = await every_rpc(channel, service, ())
        wrong = await every_rpc(channel, service, (("authorization", "Bearer nope"),))
        assert set(missing) == {m.name for m in SERVICES[service].methods}
        for name in missing:
            assert missing[name] == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"), name
            assert wrong[name] == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"), name
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in reflection(iter([b""]), timeout=10):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_read_only_token_may_read_but_not_write(
    secured: tuple[EmbedApp, SearchApp], pki: Pki
) -> None:
    _, search = secured
    with client(search, pki, token=READ_TOKEN) as c:
        assert (await InThread(c).stats()).store == "local"
        assert await InThread(c).query(vector=[1.0] + [0.0] * 63) == []
        with pytest.raises(ImageSearchError) as caught:
            await InThread(c).upsert_vectors([VectorRecord("v", [1.0] + [0.0] * 63)])
        assert (caught.value.code, caught.value.reason) == ("PERMISSION_DENIED", "TOKEN_READ_ONLY")
        assert READ_TOKEN not in str(caught.value)
    # Reading the schema is a read: server reflection lists the services.
    async with secure_channel(search.address, pki) as channel:
        reflection = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        asked = reflection_pb2.ServerReflectionRequest(list_services="")
        metadata = (("authorization", f"Bearer {READ_TOKEN}"),)
        answers = [a async for a in reflection(iter([asked]), metadata=metadata, timeout=10)]
    names = {s.name for s in answers[0].list_services_response.service}
    assert "imagesearch.v1.SearchService" in names


async def test_the_cli_reads_its_certificates_and_token_from_the_environment(
    secured: tuple[EmbedApp, SearchApp], pki: Pki, other_pki: Pki
) -> None:
    other = other_pki.ca
    _, search = secured
    env = {**os.environ, "IMAGESEARCH_TLS_CA": str(pki.ca), "IMAGESEARCH_TLS_CERT":
           str(pki.client.cert), "IMAGESEARCH_TLS_KEY": str(pki.client.key)}  # fmt: skip
    command = [sys.executable, "-m", "imagesearch_client.cli", "--target", search.address]
    without = await _run([*command, "stats", "--json"], env)
    assert without.returncode == 1, without.stderr
    assert "TOKEN_MISSING" in without.stderr
    assert "requires a token: set IMAGESEARCH_TOKEN" in without.stderr
    plaintext = await _run([*command, "stats"], {**os.environ, "IMAGESEARCH_TOKEN": TOKEN})
    assert "set IMAGESEARCH_TLS_CA" in plaintext.stderr, plaintext.stderr
    other_ca = await _run(
        [*command, "stats"], {**env, "IMAGESEARCH_TOKEN": TOKEN, "IMAGESEARCH_TLS_CA": str(other)}
    )
    assert "TLS with search_service" in other_ca.stderr, other_ca.stderr
    assert "set IMAGESEARCH_TLS_CA" in other_ca.stderr
    done = await _run([*command, "stats", "--json"], {**env, "IMAGESEARCH_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert '"store": "local"' in done.stdout
    flagged = await _run([*command, "--token", "wrong", "stats"], env)
    assert "TOKEN_INVALID" in flagged.stderr
    assert "check IMAGESEARCH_TOKEN" in flagged.stderr
    assert "wrong" not in flagged.stderr.replace("--token", "")


async def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import asyncio

    return await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("module", "variables", "words"),
    [
        ("embed_service", {"EMBED_TLS_CERT": "missing.crt", "EMBED_TLS_KEY": "SERVER_KEY"},
         "EMBED_TLS_CERT=missing.crt cannot be read"),
        ("embed_service", {"EMBED_TLS_CERT": "SERVER_CERT", "EMBED_TLS_KEY": "CLIENT_KEY"},
         "are not a PEM certificate and its private key"),
        ("embed_service", {"EMBED_TLS_CLIENT_CA": "CA"}, "EMBED_TLS_CLIENT_CA is set, but TLS"),
        ("embed_service", {"EMBED_TOKENS_FILE": "no-tokens.txt"},
         "EMBED_TOKENS_FILE=no-tokens.txt cannot be read"),
        ("embed_service", {"EMBED_TOKENS": " , "}, "EMBED_TOKENS is set but holds no token"),
        ("embed_service", {"EMBED_TOKENS_FILE": "EMPTY"},
         "EMBED_TOKENS_FILE=empty-tokens.txt holds no token"),
        ("search_service", {"SEARCH_TOKENS": ",,"}, "SEARCH_TOKENS is set but holds no token"),
        ("search_service", {"SEARCH_TOKENS_FILE": "EMPTY"},
         "SEARCH_TOKENS_FILE=empty-tokens.txt holds no token"),
        ("search_service", {"SEARCH_READ_TOKENS": " "},
         "SEARCH_READ_TOKENS is set but holds no token"),
        ("search_service", {"SEARCH_TLS_CERT": "SERVER_CERT", "SEARCH_TLS_KEY": "SERVER_CERT"},
         "SEARCH_TLS_KEY"),
        ("search_service", {"EMBED_TARGET_CA": "SERVER_KEY"}, "EMBED_TARGET_CA"),
        ("search_service", {"SEARCH_TLS_CERT": "SERVER_CERT"}, "set both SEARCH_TLS_CERT"),
    ],
)  # fmt: skip
def test_a_bad_tls_or_token_setting_stops_the_service_naming_variable_and_file(
    pki: Pki, tmp_path: Path, clip_dir: Path, module: str, variables: dict[str, str], words: str
) -> None:
    (tmp_path / "empty-tokens.txt").write_text("\n  \n")
    files = {"SERVER_CERT": pki.server.cert, "SERVER_KEY": pki.server.key,
             "CLIENT_KEY": pki.client.key, "CA": pki.ca, "EMPTY": "empty-tokens.txt"}  # fmt: skip
    env = {k: str(files.get(v, v)) for k, v in variables.items()}
    done = subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, "EMBED_MODEL": str(clip_dir), "EMBED_ADDR": "127.0.0.1:0",
             "SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": "127.0.0.1:1",
             "DATA_DIR": str(tmp_path / "data"), **env},
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_plaintext_caller_on_a_tls_port_leaves_no_raw_grpc_lines_in_the_log(
    pki: Pki, clip_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "embed.log"
    env = {
        "EMBED_MODEL": str(clip_dir), "EMBED_ADDR": "127.0.0.1:0",
        "EMBED_TLS_CERT": str(pki.server.cert), "EMBED_TLS_KEY": str(pki.server.key),
    }  # fmt: skip
    with service_process("embed_service", env, ready="embed_service ready", log=log) as (
        _,
        address,
    ):
        for _ in range(3):
            with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
    said = log.read_text()
    assert "embed_service ready" in said
    assert "Handshake failed" not in said, said
    assert "ssl_transport_security" not in said, said
    assert "Loading weights" not in said, said
