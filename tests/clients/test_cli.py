"""The `imagesearch` CLI end to end against real servers (it runs in a worker thread)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from imagesearch_client import AsyncImageSearchClient, Example, ImageSearchClient, VectorRecord
from imagesearch_client.cli import run
from imagesearch_client.contact_sheet import TILE, sheet_size, tile_origin
from PIL import Image

from search_service.app import SearchApp
from tests.support.cifar import CIFAR10_CLASSES, cifar10_archive, cifar100_archive
from tests.support.imagegen import encode, image_folder


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(run, list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = image_folder(tmp_path / "photos")
    (root / "red" / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "notes.txt").write_text("not an image, not indexed")
    return root


async def test_index_stores_a_labelled_folder_reports_bad_files_and_skips_what_it_has(
    capsys: pytest.CaptureFixture[str], search_app: SearchApp, folder: Path
) -> None:
    target = ("--target", search_app.address)
    code, out, err = await cli(capsys, *target, "index", str(folder), "--label-from-dir")
    assert code == 0, err
    assert "stored 12, already stored 0, failed 1 (of 13 images)" in out
    assert "red/broken.jpg: IMAGE_UNREADABLE" in out

    code, out, _ = await cli(capsys, *target, "index", str(folder), "--json", "--quiet")
    report = json.loads(out)
    assert (code, report["stored"], report["skipped"]) == (0, 0, 12)
    assert [f["name"] for f in report["failures"]] == ["red/broken.jpg"]

    code, out, _ = await cli(capsys, *target, "stats", "--json")
    assert json.loads(out)["namespaces"] == {"__default__": 12}


async def test_query_prints_a_table_json_and_a_contact_sheet(
    capsys: pytest.CaptureFixture[str], search_app: SearchApp, folder: Path, tmp_path: Path
) -> None:
    target = ("--target", search_app.address)
    await cli(capsys, *target, "index", str(folder), "--label-from-dir", "--quiet")
    image = folder / "green" / "green-1.png"

    code, out, _ = await cli(capsys, *target, "query", str(image), "--top-k", "3")
    assert code == 0
    header, first = out.splitlines()[:2]
    assert header.split() == ["#", "id", "score", "path", "label"]
    assert max(len(line) for line in out.splitlines()) <= 80, out  # content ids cut short
    assert first.split()[2:] == ["1.0000", "green/green-1.png", "green"]

    code, out, _ = await cli(
        capsys, *target, "query", str(image), "--json", "--filter", '{"label": "blue"}'
    )
    matches = json.loads(out)["matches"]
    assert len(matches) == 4
    assert {m["metadata"]["label"] for m in matches} == {"blue"}

    top = matches[0]["id"]
    code, out, _ = await cli(capsys, *target, "query", "--id", top, "--json", "--top-k", "1")
    assert json.loads(out)["matches"][0]["id"] == top

    grid = tmp_path / "grid.png"
    code, _, err = await cli(
        capsys, *target, "query", "--text", "a red square", "--top-k", "5",
        "--grid", str(grid), "--root", str(folder),
    )  # fmt: skip
    assert code == 0, err
    with Image.open(grid) as sheet:
        assert sheet.size == sheet_size(6)
        # The query tile is a placeholder (a text query); match tiles are real photos.
        x, y = tile_origin(0, 6)
        assert sheet.getpixel((x + TILE // 2, y + TILE // 2)) == (200, 200, 200)
        # Tiles stand apart: white between the first two, and between a caption and the
        # picture below it.
        right = tile_origin(1, 6)[0]
        assert {sheet.getpixel((right - 2, y + r)) for r in range(0, TILE, 8)} == {(255, 255, 255)}


async def test_fetch_and_delete_by_filter_and_all(
    capsys: pytest.CaptureFixture[str], search_app: SearchApp, folder: Path
) -> None:
    target = ("--target", search_app.address)
    await cli(capsys, *target, "index", str(folder), "--label-from-dir", "--quiet")
    _, out, _ = await cli(capsys, *target, "query", "--text", "x", "--json", "--top-k", "1")
    some_id = json.loads(out)["matches"][0]["id"]

    code, out, _ = await cli(capsys, *target, "fetch", some_id, "missing-id")
    fetched = json.loads(out)
    assert [r["id"] for r in fetched["records"]] == [some_id]
    assert fetched["missing"] == ["missing-id"]

    assert (await cli(capsys, *target, "delete", "--filter", '{"label": "red"}'))[0] == 0
    _, out, _ = await cli(capsys, *target, "stats", "--json")
    assert json.loads(out)["total"] == 8
    assert (await cli(capsys, *target, "delete", "--all"))[0] == 0
    _, out, _ = await cli(capsys, *target, "stats", "--json")
    assert json.loads(out)["total"] == 0

    code, _, err = await cli(
        capsys, *target, "query", "--text", "x", "--filter", '{"a": {"$x": 1}}'
    )
    assert code == 1
    assert "INVALID_FILTER" in err


async def test_index_cifar_stores_class_labels_with_seed_style_ids(
    capsys: pytest.CaptureFixture[str], search_app: SearchApp, tmp_path: Path
) -> None:
    target = ("--target", search_app.address)
    archive = cifar10_archive(tmp_path / "cifar-10-python.tar.gz", per_batch=4)
    code, out, err = await cli(capsys, *target, "index-cifar", str(archive))
    assert code == 0, err
    assert "stored 20, already stored 0, failed 0 (of 20 images)" in out
    code, out, _ = await cli(capsys, *target, "fetch", "CIFAR10.0", "CIFAR10.19")
    records = json.loads(out)["records"]
    assert [r["metadata"]["label"] for r in records] == [CIFAR10_CLASSES[4], CIFAR10_CLASSES[3]]

    hundred = cifar100_archive(tmp_path / "cifar-100-python.tar.gz", count=6)
    code, out, _ = await cli(capsys, *target, "index-cifar", str(hundred), "--limit", "4")
    assert "stored 4" in out
    code, out, _ = await cli(capsys, *target, "query", "--id", "CIFAR100.3", "--json")
    first = json.loads(out)["matches"][0]
    assert (first["id"], first["metadata"]["label"]) == ("CIFAR100.3", "class21")


async def test_an_unreachable_service_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = await cli(capsys, "--target", "127.0.0.1:1", "--timeout", "2", "stats")
    assert code == 2
    assert "127.0.0.1:1" in err


async def test_a_contact_sheet_reads_only_image_files_inside_its_root(
    capsys: pytest.CaptureFixture[str], search_app: SearchApp, folder: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes((folder / "green" / "green-1.png").read_bytes())
    (folder / "link.png").symlink_to(outside)
    dimension = (await search_app.embed.model_info()).dimension
    hostile = ["/dev/zero", "../secret.png", str(outside), "link.png", "green/../../secret.png"]
    records = [
        VectorRecord(f"h{i}", [1.0] + [0.0] * (dimension - 1), {"path": path})
        for i, path in enumerate([*hostile, "green/green-1.png"])
    ]
    with ImageSearchClient(search_app.address) as client:
        assert all(o.ok for o in await asyncio.to_thread(client.upsert_vectors, records))
    grid = tmp_path / "grid.png"
    code, _, err = await cli(
        capsys, "--target", search_app.address, "query", "--id", "h5", "--top-k", "6",
        "--filter", '{"path": {"$exists": true}}', "--grid", str(grid), "--root", str(folder),
    )  # fmt: skip
    assert code == 0, err
    with Image.open(grid) as sheet:
        rgb = sheet.convert("RGB")
        corners = [tile_origin(n, 7) for n in range(7)]
        centres = [rgb.getpixel((x + TILE // 2, y + TILE // 2)) for x, y in corners]
    # The query (h5) and its own match are the real photo; the five hostile paths read
    # nothing and are grey placeholders.
    grey = (200, 200, 200)
    assert centres.count(grey) == 5, centres
    assert centres[0] != grey


async def test_a_bad_filter_names_the_flag_or_the_place_once(
    capsys: pytest.CaptureFixture[str], search_app: SearchApp
) -> None:
    target = ("--target", search_app.address)
    code, _, err = await cli(capsys, *target, "query", "--text", "x", "--filter", "not json")
    assert code == 1
    assert err.startswith("error: --filter is not JSON (Expecting value")
    code, _, err = await cli(
        capsys, *target, "query", "--text", "x", "--filter", '{"label": {"$regex": "c.*"}}'
    )
    assert code == 1
    assert err.count("filter.label.$regex") == 1, err
    assert "unknown operator '$regex'" in err


async def test_query_combines_weighted_examples_and_refines(
    capsys: pytest.CaptureFixture[str], search_app: SearchApp, folder: Path
) -> None:
    target = ("--target", search_app.address)
    await cli(capsys, *target, "index", str(folder), "--label-from-dir", "--quiet")
    red, blue = folder / "red" / "red-0.jpg", folder / "blue" / "blue-1.png"
    code, out, err = await cli(
        capsys, *target, "query", "--image", str(red), "--image", f"0.5:{blue}",
        "--not-text", "0.2:a green square", "--top-k", "5", "--json",
    )  # fmt: skip
    assert code == 0, err
    combined = [m["id"] for m in json.loads(out)["matches"]]
    async with AsyncImageSearchClient(search_app.address) as client:
        expected = await client.query(examples=[
            Example(image=red.read_bytes()), Example(image=blue.read_bytes(), weight=0.5),
            Example(text="a green square", weight=-0.2),
        ], top_k=5)  # fmt: skip
    assert combined == [m.id for m in expected]
    code, out, err = await cli(
        capsys, *target, "query", str(red), "--collapse-above", "0.5", "--top-k", "3"
    )
    assert code == 0, err
    assert "similar" in out.splitlines()[0]
    assert "+" in out  # the other red pictures are folded into the first
    code, _, err = await cli(capsys, *target, "query", str(red), "--diversity", "2")
    assert code == 1
    assert "diversity" in err


async def test_duplicates_prints_groups_json_and_one_sheet_per_group(
    capsys: pytest.CaptureFixture[str], search_app: SearchApp, folder: Path, tmp_path: Path
) -> None:
    target = ("--target", search_app.address)
    await cli(capsys, *target, "index", str(folder), "--label-from-dir", "--quiet")
    # The same picture again under another name: an exact duplicate of a stored one.
    copy = tmp_path / "again" / "red"
    copy.mkdir(parents=True)
    (copy / "red-0-copy.png").write_bytes(encode(Image.open(folder / "red" / "red-0.jpg"), "PNG"))
    await cli(capsys, *target, "index", str(tmp_path / "again"), "--quiet")
    sheets = tmp_path / "sheets"
    code, out, err = await cli(capsys, *target, "duplicates", "--min-score", "0.999", "--json",
                               "--grid", str(sheets), "--root", str(folder))  # fmt: skip
    assert code == 0, err
    groups = json.loads(out)["groups"]
    assert groups
    assert all(len(g["members"]) >= 2 for g in groups)
    assert any(g["exact"] for g in groups)
    assert sorted(p.name for p in sheets.iterdir()) == [
        f"group-{n:04d}.png" for n in range(1, len(groups) + 1)
    ]
    code, out, _ = await cli(capsys, *target, "duplicates", "--min-score", "0.999")
    assert "exact duplicates" in out
    code, _, err = await cli(capsys, *target, "duplicates", "--min-score", "0")
    assert code == 1
    assert "min_score" in err
