"""The documentation's recipes, run as written: the blocks of README.md and docs/*.md marked
`<!-- tested: NAME -->`; and docs/configuration.md, which must be what the settings say.

The Python examples run as scripts against a search_service process.

In a scratch folder beside the repository's Makefile, scripts and virtualenv, with the
tiny model (EMBED_MODEL) and free loopback ports put in place of the recipe's own, the
try-out PKI block makes certificates and tokens, the run block starts two TLS replicas,
search_service and the gallery with `make run`, and the check block's commands (a query
that embeds over mutual TLS, stats, the metrics) must all succeed.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from embed_service.app import EmbedApp
from tests.support.cifar import cifar10_archive
from tests.support.imagegen import encode, image_folder, picture
from tests.support.stack import free_port, free_ports, service_process

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- tested: (?P<name>[\w-]+) -->\n```(?:sh|python)\n(?P<body>.*?)```", re.S)


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\((?!https?://|#)(?P<target>[^)#\s]+)")


def marked_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for doc in DOCS:
        for m in BLOCK.finditer(doc.read_text()):
            assert m["name"] not in blocks, f"{m['name']} is marked twice"
            blocks[m["name"]] = m["body"]
    return blocks


def test_the_configuration_doc_is_what_the_settings_say() -> None:
    checked = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_every_link_between_the_docs_leads_to_a_file() -> None:
    for doc in DOCS:
        for link in LINK.finditer(doc.read_text()):
            assert (doc.parent / link["target"]).exists(), (doc.name, link["target"])


def run_block(body: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", body],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_docs_mark_every_recipe_these_tests_run() -> None:
    assert set(marked_blocks()) == {
        "cli-examples", "deploy-pki", "deploy-run", "deploy-check", "gallery-commands",
        "python-sync", "python-async", "python-readme", "refine-examples",
    }  # fmt: skip


def test_the_deployment_recipe_works_as_written(clip_dir: Path, tmp_path: Path) -> None:
    blocks = marked_blocks()
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("Makefile", "scripts", ".venv", "pyproject.toml"):
        (work / name).symlink_to(ROOT / name)
    pictures = image_folder(tmp_path / "Pictures", per_class=1)
    replicas, embed_metrics = free_ports(2), free_ports(2)
    ports = {
        "50061": str(replicas), "50062": str(replicas + 1), "50052": str(free_port()),
        "9464": str(embed_metrics), "9474": str(free_port()),
    }  # fmt: skip

    def localised(body: str) -> str:
        for recipe, ours in ports.items():
            body = body.replace(f":{recipe}", f":{ours}")
        return body.replace("DIR=~/Pictures", f"DIR={pictures}")

    env = {
        **os.environ,
        "EMBED_MODEL": str(clip_dir),
        "EMBED_PRECISION": "fp32",
        "EMBED_ADDR": f"127.0.0.1:{ports['50061']}",
        "SEARCH_ADDR": f"127.0.0.1:{ports['50052']}",
        "WEB_ADDR": f"127.0.0.1:{free_port()}",
        "DATA_DIR": str(tmp_path / "data"),
        # The scratch checkout shares the repository's installed .venv: never reinstall there.
        "MAKEFLAGS": "-o .venv/.installed",
    }
    made = run_block(blocks["deploy-pki"], work, env)
    assert made.returncode == 0, made.stderr
    assert (work / "certs" / "search-client.crt").is_file()

    log = tmp_path / "run.log"
    with log.open("w") as sink:
        running = subprocess.Popen(
            ["bash", "-e", "-c", localised(blocks["deploy-run"])],
            cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "search_service ready" not in log.read_text():
            assert running.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        checked = run_block(localised(blocks["deploy-check"]), work, env)
        assert checked.returncode == 0, checked.stdout + checked.stderr + log.read_text()
        assert "no matches" in checked.stdout  # the query embedded, on an empty store
        assert 'grpc_method="Query"' in checked.stdout
        with urllib.request.urlopen(f"http://{env['WEB_ADDR']}/", timeout=30) as page:
            text = page.read().decode()
        assert "Index Pictures" in text
        assert "IMAGESEARCH_TOKEN" not in text  # the gallery got its token and TLS files
        assert "cannot be reached" not in text
    finally:
        os.killpg(running.pid, signal.SIGINT)
        running.wait(30)
    said = log.read_text()
    assert "Traceback" not in said, said
    assert "Hostname Verification" not in said, said


async def test_the_python_examples_run_as_written(embed_app: EmbedApp, tmp_path: Path) -> None:
    blocks = marked_blocks()
    (tmp_path / "cat.jpg").write_bytes(encode(picture("red"), "JPEG"))
    env = {
        "SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": embed_app.address,
        "DATA_DIR": str(tmp_path / "data"), "VECTOR_STORE": "local",
    }  # fmt: skip
    said: dict[str, str] = {}

    def run() -> None:  # off the loop that serves embed_service
        with service_process("search_service", env, ready="search_service ready") as (_, at):
            for name in ("python-sync", "python-async", "python-readme"):
                done = subprocess.run(
                    [sys.executable, "-c", blocks[name].replace("127.0.0.1:50052", at)],
                    cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr
                said[name] = done.stdout

    await asyncio.to_thread(run)
    stored, match, page = said["python-sync"].splitlines()
    assert "ok=True" in stored
    assert ast.literal_eval(match.split(" ", 2)[2]) == {"label": "cat", "path": "cat.jpg"}
    assert page == f"[{match.split()[0]!r}]"
    assert match.split()[0] in said["python-async"]
    first = said["python-readme"].splitlines()[0]
    assert first.split()[0] == match.split()[0]  # the same picture, hence the same id
    assert ast.literal_eval(first.split(" ", 2)[2]) == {"label": "cat"}


async def test_the_quick_start_cli_examples_run_as_written(
    embed_app: EmbedApp, tmp_path: Path
) -> None:
    pictures = tmp_path / "home" / "Pictures"
    for label, colour in (("cats", "red"), ("dogs", "blue")):
        (pictures / label).mkdir(parents=True)
        for shape in range(2):
            image = encode(picture(colour, shape=shape), "JPEG")
            (pictures / label / f"{label}-{shape}.jpg").write_bytes(image)
    (pictures / "cat.jpg").write_bytes(encode(picture("red", shape=3), "JPEG"))
    home = tmp_path / "home"
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    env = {
        "SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": embed_app.address,
        "DATA_DIR": str(tmp_path / "data"), "VECTOR_STORE": "local",
    }  # fmt: skip
    said: list[str] = []

    def run() -> None:  # off the loop that serves embed_service
        with service_process("search_service", env, ready="search_service ready") as (_, at):
            shell = {**os.environ, "HOME": str(home), "SEARCH_ADDR": at}
            done = run_block(marked_blocks()["cli-examples"], work, shell)
            assert done.returncode == 0, done.stdout + done.stderr
            said.append(done.stdout)
            refined = run_block(marked_blocks()["refine-examples"], work, shell)
            assert refined.returncode == 0, refined.stdout + refined.stderr
            said.append(refined.stdout)

    await asyncio.to_thread(run)
    out = said[0]
    assert re.search(r"^1 .* 1\.0000 +cat\.jpg", out, re.M), out  # the query by cat.jpg
    assert "cats/cats-" in out  # and the cats after it
    assert "dogs/" in out  # the text query, filtered to the dogs label
    assert "total" in out
    assert (work / "matches.png").is_file()
    refined = said[1]
    assert refined.count("score") >= 4  # four tables of matches
    assert "similar" in refined  # the collapse column
    assert "group 1:" in refined or "no duplicates" in refined


def wait_for_page(url: str, process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


def test_each_way_to_start_the_gallery_serves_it(clip_dir: Path, tmp_path: Path) -> None:
    """Each line of the gallery's block is one way to start it: each must serve the page."""
    home = tmp_path / "home"
    image_folder(home / "Pictures", per_class=1)
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("Makefile", "scripts", ".venv", "pyproject.toml"):
        (work / name).symlink_to(ROOT / name)
    cifar10_archive(work / "cifar-10-python.tar.gz")
    lines = [line for line in marked_blocks()["gallery-commands"].splitlines() if line.strip()]
    assert len(lines) == 3
    for n, line in enumerate(lines):
        web_addr = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ, "HOME": str(home), "WEB_ADDR": web_addr,
            "EMBED_MODEL": str(clip_dir), "EMBED_ADDR": f"127.0.0.1:{free_port()}",
            "SEARCH_ADDR": f"127.0.0.1:{free_port()}", "DATA_DIR": str(tmp_path / f"data{n}"),
            "MAKEFLAGS": "-o .venv/.installed",
        }  # fmt: skip
        log = tmp_path / f"gallery{n}.log"
        with log.open("w") as sink:
            started = subprocess.Popen(
                ["bash", "-c", line], cwd=work, env=env, stdout=sink,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            page = wait_for_page(f"http://{web_addr}/", started, log)
            assert 'id="index-button"' in page, line
            root = "." if "--root ." in line else "Pictures"
            assert f">Index {root}</button>" in page, line
        finally:
            os.killpg(started.pid, signal.SIGINT)
            started.wait(30)
        assert "Traceback" not in log.read_text(), line
