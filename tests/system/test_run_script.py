"""`make run` as a person uses it: start both, index, query, Ctrl-C, and both are gone.

Ctrl-C comes while clients watch health (load balancers and waiting clients do), and
while a model is still loading: neither may hold up the stop.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagesearch_client import ImageSearchClient

from tests.support.imagegen import image_folder
from tests.support.stack import free_port, free_ports

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 10.0  # EMBED_GRACE_S and SEARCH_GRACE_S defaults
PROMPT_S = 5.0  # a stop with nothing in flight takes a second or two


def watch_health(address: str, seen: list[int]) -> threading.Thread:
    """A client that keeps a health Watch open, recording what it is told."""

    def watch() -> None:
        with grpc.insecure_channel(address) as channel:
            request = health_pb2.HealthCheckRequest(service="")
            try:
                for reply in health_pb2_grpc.HealthStub(channel).Watch(request):
                    seen.append(reply.status)
            except grpc.RpcError:
                pass

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def wait_for_page(url: str, timeout_s: float = 60.0) -> str:
    """The page at `url` once it answers 200 (the gallery starts beside the services)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("replicas", [1, 2])
def test_ctrl_c_stops_both_services_within_the_grace_period_without_a_traceback(
    clip_dir: Path, tmp_path: Path, replicas: int
) -> None:
    search_addr = f"127.0.0.1:{free_port()}"
    web_addr = f"127.0.0.1:{free_port()}"
    folder = image_folder(tmp_path / "images", per_class=2)
    first = free_ports(replicas)
    embed_addr = f"127.0.0.1:{first}"
    env = {
        **os.environ,
        "PY": sys.executable,
        "EMBED_MODEL": str(clip_dir),
        "EMBED_ADDR": embed_addr,
        "SEARCH_ADDR": search_addr,
        "DATA_DIR": str(tmp_path / "data"),
        "VECTOR_STORE": "local",
        "EMBED_REPLICAS": str(replicas),
        "WEB_ADDR": web_addr,
        "WEB_ROOT": str(folder),
    }
    log = tmp_path / "run.log"
    with log.open("w") as sink:
        # A session of its own, so SIGINT reaches the whole group, as a terminal's Ctrl-C does.
        run = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(ROOT), "run"],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with ImageSearchClient(search_addr, timeout_s=30) as client:
            client.wait_ready(timeout_s=60)
        cli = [sys.executable, "-m", "imagesearch_client.cli", "--target", search_addr]
        indexed = subprocess.run(
            [*cli, "index", str(folder), "--label-from-dir", "--quiet"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert indexed.returncode == 0, indexed.stderr
        assert "stored 6" in indexed.stdout
        queried = subprocess.run(
            [*cli, "query", "--text", "a red square", "--top-k", "3", "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert queried.returncode == 0, queried.stderr
        gallery = wait_for_page(f"http://{web_addr}/")
        assert "Index images" in gallery
        assert 'alt="' in gallery  # the 6 stored images are shown
        told: dict[str, list[int]] = {search_addr: []}
        told.update({f"127.0.0.1:{first + i}": [] for i in range(replicas)})
        watchers = [watch_health(address, seen) for address, seen in told.items()]
        while not all(told.values()):
            time.sleep(0.05)

        started = time.monotonic()
        os.killpg(run.pid, signal.SIGINT)
        run.wait(timeout=GRACE_S + 5)
        assert time.monotonic() - started < PROMPT_S
        for watcher in watchers:
            watcher.join(timeout=5)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert all(seen[-1] == not_serving for seen in told.values()), told
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    # Nothing of the group is left running.
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "CancelledError" not in text, text
    if replicas > 1:
        target = ",".join(f"127.0.0.1:{first + i}" for i in range(replicas))
        assert f"embed_service at ipv4:{target}" in text, text


def test_sigint_while_the_model_loads_stops_embed_service_even_with_sigint_inherited_ignored(
    clip_dir: Path, tmp_path: Path
) -> None:
    """A shell's `cmd &` starts cmd with SIGINT ignored; the service must still hear it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "embed_service"],
        env={**os.environ, "EMBED_MODEL": str(clip_dir), "EMBED_ADDR": "127.0.0.1:0"},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if re.search(r"listening on .* \(loading ", line):
            break
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        rest = process.communicate(timeout=PROMPT_S + 5)[1]
    finally:
        process.kill()
    elapsed = time.monotonic() - started
    text = "".join(lines) + rest
    assert process.returncode == 0, text
    assert elapsed < PROMPT_S, text
    assert "ready" not in rest or "stopping" in rest, text
    assert "Traceback" not in text, text


@pytest.mark.parametrize("failure", ["search port in use", "model that cannot load"])
def test_make_run_fails_loudly_when_a_service_cannot_start(
    clip_dir: Path, tmp_path: Path, failure: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        search_addr = f"127.0.0.1:{taken.getsockname()[1]}"
        if failure == "model that cannot load":
            search_addr = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "PY": sys.executable,
            "EMBED_MODEL": str(clip_dir if failure != "model that cannot load" else tmp_path),
            "EMBED_ADDR": f"127.0.0.1:{free_ports(1)}",
            "SEARCH_ADDR": search_addr,
            "DATA_DIR": str(tmp_path / "data"),
            "WEB_ADDR": f"127.0.0.1:{free_port()}",
        }
        env.pop("WEB_ROOT", None)
        env.pop("DIR", None)
        done = subprocess.run(
            ["make", "--no-print-directory", "-C", str(ROOT), "run"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
            start_new_session=True,
        )  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "a service exited (status 2)" in said
    if failure == "search port in use":
        assert f"could not listen on {search_addr}" in said, said
    else:
        assert "EMBED_MODEL" in said, said
    assert "Traceback" not in said
    assert said.count("stopping the gallery") == 1
    # Without DIR the gallery is given an empty folder, never the checkout it runs from.
    assert f"Index indexes {tmp_path / 'data' / 'pictures'};" in said, said
    assert (tmp_path / "data" / "pictures").is_dir()
