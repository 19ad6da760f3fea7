"""`imagesearch reembed` end to end: a store filled by a tiny CLIP moves to a second stack
running a tiny SigLIP, every record accounted for, the old stack unchanged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from imagesearch_client import ImageSearchClient
from imagesearch_client.cli import run

from embed_service.app import EmbedApp
from tests.support.cifar import cifar10_archive
from tests.support.fixtures import StartSearch
from tests.support.imagegen import image_folder
from tests.support.stack import serving_embed
from tests.support.tiny_families import build_family

pytestmark = pytest.mark.slow


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(run, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def everything(address: str) -> dict[tuple[str, str], tuple[dict[str, object], np.ndarray]]:
    """(namespace, id) -> (metadata, vector) of every record of the store at `address`."""
    out = {}
    with ImageSearchClient(address) as client:
        for namespace in ("", "cifar"):
            for page in client.iter_pages(namespace=namespace, include_metadata=True,
                                          include_values=True):  # fmt: skip
                for record in page.records:
                    vector = np.asarray(record.values, np.float32)
                    out[namespace, record.id] = (record.metadata, vector)
    return out


def forget(address: str, ids: list[str]) -> None:
    with ImageSearchClient(address) as client:
        client.delete(ids=ids, namespace="cifar")


async def test_reembed_moves_every_record_to_the_new_model_and_resumes(
    capsys: pytest.CaptureFixture[str],
    embed_app: EmbedApp,
    start_search_app: StartSearch,
    tmp_path: Path,
) -> None:
    photos = image_folder(tmp_path / "photos", per_class=3)
    archive = cifar10_archive(tmp_path / "cifar-10-python.tar.gz", per_batch=2)
    old = await start_search_app(tmp_path / "old")
    target = ("--target", old.address)
    assert (await cli(capsys, *target, "index", str(photos), "--label-from-dir"))[0] == 0
    code, _, err = await cli(capsys, *target, "index-cifar", str(archive),
                             "--namespace", "cifar")  # fmt: skip
    assert code == 0, err
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    gone = files[0]
    gone_path = gone.relative_to(photos).as_posix()
    gone.unlink()  # its record stays in the old store, its source does not
    before = await asyncio.to_thread(everything, old.address)
    assert len(before) == len(files) + 10

    siglip_dir = build_family(tmp_path / "siglip", "siglip", seed=2)
    async with serving_embed(siglip_dir) as siglip:
        new = await start_search_app(tmp_path / "new", embed_target=siglip.address)
        moved = ("--to", new.address, "--root", str(photos), "--cifar", str(archive))
        code, out, err = await cli(capsys, *target, "reembed", *moved, "--json")
        assert code == 1, err  # one record had no source
        report = json.loads(out)
        listed = len(files) + 10
        counts = (report["listed"], report["reembedded"], report["already"])
        assert counts == (listed, listed - 1, 0)
        assert report["failed"] == []
        [missing] = report["missing"]
        assert missing["namespace"] == ""
        assert gone_path in missing["why"]
        after = await asyncio.to_thread(everything, new.address)
        assert set(after) == set(before) - {("", missing["id"])}
        async with grpc.aio.insecure_channel(siglip.address) as channel:
            stub = pb_grpc.EmbedServiceStub(channel)
            for (namespace, record_id), (metadata, vector) in after.items():
                assert metadata == before[namespace, record_id][0]
                assert len(vector) == 32  # SigLIP's, not the CLIP's 64
                if namespace == "":  # the file's own vector under the new model
                    data = (photos / str(metadata["path"])).read_bytes()
                    reply = await stub.EmbedImages(pb.EmbedImagesRequest(images=[data]))
                    assert float(np.dot(reply.embeddings[0].values, vector)) >= 0.9999
        unchanged = await asyncio.to_thread(everything, old.address)
        assert unchanged.keys() == before.keys()
        for key, (metadata, vector) in unchanged.items():
            assert metadata == before[key][0]
            assert np.array_equal(vector, before[key][1])

        # Interrupted runs resume: what is in the new store is not embedded again.
        await asyncio.to_thread(forget, new.address, ["CIFAR10.3", "CIFAR10.7"])
        code, out, _ = await cli(capsys, *target, "reembed", *moved, "--namespace", "cifar")
        assert code == 0
        assert "2 re-embedded, 8 already there, 0 without a source, 0 failed (of 10" in out
        assert set(await asyncio.to_thread(everything, new.address)) == set(after)
