"""embed_service as a real process, and the generated stubs against the protos."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.stack import free_port

ROOT = Path(__file__).resolve().parents[2]


def run_embed_service(
    cwd: Path, *, unset: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m embed_service` to its exit, on a free port."""
    inherited = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, "-m", "embed_service"],
        env={**inherited, "EMBED_ADDR": "127.0.0.1:0", **env},
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


def test_an_unreachable_hub_is_reported_within_seconds_not_after_retries(tmp_path: Path) -> None:
    started = time.monotonic()
    done = run_embed_service(
        tmp_path,
        unset=("HF_HUB_OFFLINE",),
        EMBED_MODEL="openai/clip-vit-base-patch32",
        HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        HF_HOME=str(tmp_path / "hf"),
        EMBED_GRACE_S="0",
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert "cannot be reached" in done.stderr
    assert "no copy of the model is cached here" in done.stderr
    assert "set EMBED_MODEL to its path" in done.stderr
    # Start-up (imports, torch) is most of it; the hub check itself is bounded at 3 s.
    assert elapsed < 20, elapsed


def test_an_unreachable_hub_still_serves_a_model_from_the_local_cache(
    tmp_path: Path, clip_dir: Path
) -> None:
    # The hub cache's own layout: models--<org>--<name>/snapshots/<revision>, refs/main.
    repo = tmp_path / "hf" / "hub" / "models--tests--tiny-clip"
    shutil.copytree(clip_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    process = subprocess.Popen(
        [sys.executable, "-m", "embed_service"],
        env={
            **{k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"},
            "EMBED_ADDR": "127.0.0.1:0",
            "EMBED_MODEL": "tests/tiny-clip",
            "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "HF_HOME": str(tmp_path / "hf"),
        },
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if "embed_service ready" in line:
                break
    finally:
        process.terminate()
        process.wait(30)
    text = "".join(seen)
    assert "loading tests/tiny-clip from the local cache only" in text
    assert "embed_service ready" in text, text


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


@pytest.mark.parametrize("family", ["align", "vit"])
def test_a_checkpoint_of_another_family_exits_2_naming_it_and_what_is_supported(
    tmp_path: Path, family: str
) -> None:
    import transformers

    folder = tmp_path / family
    if family == "align":  # refused by its config alone, before any weight is read
        transformers.AlignConfig().save_pretrained(folder)
    else:  # an image model with no text tower at all
        small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                 "num_attention_heads": 2}  # fmt: skip
        config = transformers.ViTConfig(**small, image_size=32, patch_size=16)
        transformers.ViTModel(config).save_pretrained(folder)
    done = run_embed_service(tmp_path, EMBED_MODEL=str(folder))
    assert done.returncode == 2, done.stderr
    assert f"a {family!r} checkpoint" in done.stderr
    assert "embed_service embeds these families: clip: CLIP" in done.stderr
    assert "siglip: SigLIP" in done.stderr
    if family == "align":
        assert "EfficientNet" in done.stderr
    assert "Traceback" not in done.stderr
