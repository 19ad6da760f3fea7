"""The thin client as another backend installs it: a fresh virtualenv, `pip install ./clients`
only, no torch. Its CLI and both clients then work against both services run as processes
with TLS and a token, and it carries no server code."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from embed_service.app import EmbedApp
from tests.support.certs import make_pki
from tests.support.imagegen import image_folder
from tests.support.stack import service_process

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "thin-client-token"

USE_BOTH_CLIENTS = """
import asyncio, sys
import imagesearch, imagesearch_client
from imagesearch_client import AsyncImageSearchClient, ImageSearchClient

target, ca = sys.argv[1], sys.argv[2]
with ImageSearchClient(target, tls_ca=ca, token="{token}") as client:
    print("sync", [m.id for m in client.query(text="a red square", top_k=2)])

async def main():
    async with AsyncImageSearchClient(target, tls_ca=ca, token="{token}") as client:
        print("async", (await client.stats()).total)

asyncio.run(main())
"""


def run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # From the venv's own folder: the checkout's packages must not be found by the cwd.
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=venv, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def install_the_client_alone(venv: Path) -> None:
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False)
    assert made.returncode == 0
    installed = run(venv, "pip", "install", "--quiet", "--disable-pip-version-check",
                    str(ROOT / "clients"))  # fmt: skip
    assert installed.returncode == 0, installed.stderr


async def test_the_client_installs_alone_without_torch_and_works_with_tls_and_a_token(
    embed_app: EmbedApp, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    await asyncio.to_thread(install_the_client_alone, venv)
    for module in ("torch", "transformers", "qdrant_edge", "embed_service", "search_service",
                   "imagesearch_serving", "imagesearch.serving", "pyarrow"):  # fmt: skip
        absent = await asyncio.to_thread(run, venv, "python", "-c", f"import {module}")
        assert "ModuleNotFoundError" in absent.stderr, module
    listing = "import imagesearch, os; print(os.listdir(os.path.dirname(imagesearch.__file__)))"
    shipped = await asyncio.to_thread(run, venv, "python", "-c", listing)
    assert "serving.py" not in shipped.stdout
    assert "metrics.py" not in shipped.stdout

    pki = make_pki(tmp_path / "pki")
    folder = image_folder(tmp_path / "photos", per_class=1)
    env = {
        "SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": embed_app.address,
        "DATA_DIR": str(tmp_path / "data"), "VECTOR_STORE": "local",
        "SEARCH_TLS_CERT": str(pki.server.cert), "SEARCH_TLS_KEY": str(pki.server.key),
        "SEARCH_TOKENS": TOKEN,
    }  # fmt: skip
    said: dict[str, subprocess.CompletedProcess[str]] = {}

    def use() -> None:  # off the loop that serves embed_service
        with service_process("search_service", env, ready="search_service ready") as (_, at):
            cli = ("imagesearch", "--target", at, "--tls-ca", str(pki.ca), "--token", TOKEN)
            said["index"] = run(venv, *cli, "index", str(folder), "--label-from-dir", "--quiet")
            said["query"] = run(venv, *cli, "query", "--text", "a red square", "--top-k", "1")
            script = textwrap.dedent(USE_BOTH_CLIENTS.format(token=TOKEN))
            said["clients"] = run(venv, "python", "-c", script, at, str(pki.ca))
            said["export"] = run(venv, *cli, "export", str(tmp_path / "out.parquet"))

    await asyncio.to_thread(use)
    assert said["index"].returncode == 0, said["index"].stderr
    assert said["query"].returncode == 0, said["query"].stderr
    assert "red/red-0.jpg" in said["query"].stdout
    assert said["clients"].returncode == 0, said["clients"].stderr
    lines = said["clients"].stdout.splitlines()
    assert lines[0].startswith("sync ['")
    assert lines[1] == "async 3"
    # Without the `transfer` extra, export says what to install instead of a traceback.
    assert said["export"].returncode == 1
    assert "pip install 'imagesearch-client[transfer]'" in said["export"].stderr
