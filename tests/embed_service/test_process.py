"""embed_service as a real process, and the generated stubs against the protos."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_embed_service(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs `python -m embed_service` to its exit, on a free port."""
    return subprocess.run(
        [sys.executable, "-m", "embed_service"],
        env={**os.environ, "EMBED_ADDR": "127.0.0.1:0", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_missing_model_directory_exits_non_zero_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    done = run_embed_service(tmp_path, EMBED_MODEL=str(missing))
    assert done.returncode == 2
    assert str(missing) in done.stderr
    assert "EMBED_MODEL" in done.stderr
    assert "save_pretrained" in done.stderr


def test_an_unreachable_hub_id_exits_non_zero_and_says_how_to_use_a_local_copy(
    tmp_path: Path,
) -> None:
    done = run_embed_service(
        tmp_path,
        EMBED_MODEL="openai/clip-vit-base-patch32",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    assert done.returncode == 2
    assert "openai/clip-vit-base-patch32" in done.stderr
    assert "set EMBED_MODEL to its path" in done.stderr


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "protos"))
    try:
        from generate import generate
    finally:
        sys.path.remove(str(ROOT / "protos"))
    fresh = generate(tmp_path)
    assert fresh, "no stubs were generated"
    for path in fresh:
        committed = ROOT / "protos" / path.relative_to(tmp_path)
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            pytest.fail(f"{committed.relative_to(ROOT)} is stale: run `make proto` and commit")
