"""EmbedService over real gRPC, with the tiny CLIP loaded through from_pretrained."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagesearch.status import reason_of
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from PIL import Image
from transformers import CLIPImageProcessorPil

from embed_service.app import EmbedApp
from tests.support.imagegen import encode, picture, png_claiming
from tests.support.stack import embed_settings, serving_embed

Stub = pb_grpc.EmbedServiceStub


def vec(embedding: pb.Embedding) -> np.ndarray:
    return np.asarray(embedding.values, dtype=np.float32)


async def test_model_info_reports_dimension_fingerprint_and_limits(embed_stub: Stub) -> None:
    info = await embed_stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.dimension == 64
    assert len(info.fingerprint) == 32
    assert info.device == "cpu"
    assert info.precision == pb.PRECISION_FLOAT32
    assert info.max_batch_size == 64
    assert info.max_text_tokens == 77
    assert info.image_size == 64


async def test_every_supported_format_gives_a_unit_vector_of_the_model_dimension(
    embed_stub: Stub,
) -> None:
    image = picture("blue")
    images = [
        encode(image, "JPEG", quality=95),
        encode(image, "PNG"),
        encode(image, "WEBP", lossless=True),
        encode(image.convert("P"), "GIF"),
        encode(image, "BMP"),
        encode(image, "TIFF"),
    ]
    reply = await embed_stub.EmbedImages(pb.EmbedImagesRequest(images=images))
    assert len(reply.embeddings) == len(images)
    for embedding in reply.embeddings:
        assert not embedding.HasField("error")
        assert len(embedding.values) == 64
        assert np.linalg.norm(vec(embedding)) == pytest.approx(1.0, abs=1e-5)
    lossless = [vec(e) for e in reply.embeddings[1:]]
    # PNG, lossless WebP, BMP and TIFF hold the same pixels, so the same vector.
    for other in (lossless[1], lossless[3], lossless[4]):
        assert np.allclose(lossless[0], other, atol=1e-6)


async def test_the_same_image_twice_gives_the_same_vector(embed_stub: Stub) -> None:
    data = encode(picture("green", shape=1), "JPEG")
    reply = await embed_stub.EmbedImages(pb.EmbedImagesRequest(images=[data, data]))
    assert np.allclose(vec(reply.embeddings[0]), vec(reply.embeddings[1]), atol=1e-6)


async def test_different_images_give_different_vectors(embed_stub: Stub) -> None:
    images = [encode(picture("red")), encode(picture("blue", shape=2))]
    reply = await embed_stub.EmbedImages(pb.EmbedImagesRequest(images=images))
    assert float(vec(reply.embeddings[0]) @ vec(reply.embeddings[1])) < 0.999


@pytest.mark.parametrize("orientation", [3, 6, 8])
async def test_an_exif_rotated_copy_embeds_like_the_upright_original(
    embed_stub: Stub, orientation: int
) -> None:
    upright = picture("purple", size=(160, 96), shape=2)
    # What a camera stores for each orientation tag: exif_transpose undoes it.
    stored = {
        3: upright.transpose(Image.Transpose.ROTATE_180),
        6: upright.transpose(Image.Transpose.ROTATE_90),
        8: upright.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    images = [encode(upright), encode(stored, exif=exif.tobytes()), encode(stored)]
    reply = await embed_stub.EmbedImages(pb.EmbedImagesRequest(images=images))
    original, rotated, unrotated = (vec(e) for e in reply.embeddings)
    assert np.allclose(original, rotated, atol=1e-5)
    assert float(original @ unrotated) < 0.9999  # the tag, not luck, made them equal


async def test_a_bad_image_gets_its_own_error_and_the_rest_are_embedded(embed_stub: Stub) -> None:
    good = encode(picture("red"), "JPEG")
    truncated = good[: len(good) // 2]
    images = [
        good,
        b"",
        b"definitely not an image",
        truncated,
        png_claiming(100_000, 100_000),
        good,
    ]
    reply = await embed_stub.EmbedImages(pb.EmbedImagesRequest(images=images))
    assert len(reply.embeddings) == 6
    reasons = [reason_of(e.error) if e.HasField("error") else "" for e in reply.embeddings]
    assert reasons == [
        "",
        "IMAGE_EMPTY",
        "IMAGE_UNREADABLE",
        "IMAGE_UNREADABLE",
        "IMAGE_TOO_LARGE",
        "",
    ]
    for embedding in reply.embeddings[1:5]:
        assert embedding.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert embedding.error.message
        assert not embedding.values
    assert np.allclose(vec(reply.embeddings[0]), vec(reply.embeddings[5]), atol=1e-6)
    # The service keeps serving after bad input.
    again = await embed_stub.EmbedImages(pb.EmbedImagesRequest(images=[good]))
    assert np.allclose(vec(again.embeddings[0]), vec(reply.embeddings[0]), atol=1e-6)


async def test_a_decompression_bomb_is_refused_with_a_message_naming_the_limit(
    embed_stub: Stub,
) -> None:
    # 60M pixels: under Pillow's own bomb limit, over ours (50M). Decoding it would
    # allocate 180 MB; a 10 G pixel claim (above) would need 30 GB.
    bomb = png_claiming(10_000, 6_000)
    reply = await embed_stub.EmbedImages(pb.EmbedImagesRequest(images=[bomb]))
    error = reply.embeddings[0].error
    assert reason_of(error) == "IMAGE_TOO_LARGE"
    assert "EMBED_MAX_IMAGE_PIXELS" in error.message
    assert "10000x6000" in error.message


async def test_texts_embed_into_the_same_dimension_and_long_texts_are_truncated(
    embed_stub: Stub,
) -> None:
    texts = ["a photo of a dog", "word " * 200, "   ", "a photo of a dog"]
    reply = await embed_stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts))
    short, long, empty, again = reply.embeddings
    assert len(short.values) == 64
    assert len(long.values) == 64
    assert np.linalg.norm(vec(short)) == pytest.approx(1.0, abs=1e-5)
    assert not short.truncated
    assert long.truncated
    assert reason_of(empty.error) == "TEXT_EMPTY"
    assert np.allclose(vec(short), vec(again), atol=1e-6)


async def test_a_batch_over_the_maximum_is_invalid_argument_with_a_field_violation(
    embed_stub: Stub,
) -> None:
    data = encode(picture("red"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embed_stub.EmbedImages(pb.EmbedImagesRequest(images=[data] * 65))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "EMBED_MAX_BATCH_SIZE" in (caught.value.details() or "")


async def test_an_empty_request_is_invalid_argument(embed_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embed_stub.EmbedTexts(pb.EmbedTextsRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_preprocessing_matches_the_transformers_processor(clip_dir: Path) -> None:
    from embed_service.images import Preprocessing, prepare

    processor = CLIPImageProcessorPil.from_pretrained(str(clip_dir))
    spec = Preprocessing.from_processor(processor)
    for size in [(300, 200), (90, 250), (64, 64), (65, 400)]:
        image = picture("cyan", size=size, shape=1)
        ours = prepare(encode(image), spec, max_pixels=10**8)
        theirs = processor(images=image, return_tensors="np")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 64, 64)
        assert np.abs(ours - theirs).max() < 1e-5


async def test_jpeg_draft_decoding_stays_close_to_a_full_decode(clip_dir: Path) -> None:
    from embed_service.images import Preprocessing, prepare

    processor = CLIPImageProcessorPil.from_pretrained(str(clip_dir))
    spec = Preprocessing.from_processor(processor)
    data = encode(picture("yellow", size=(640, 480), shape=2), "JPEG", quality=95)
    ours = prepare(data, spec, max_pixels=10**8)
    with Image.open(io.BytesIO(data)) as full:
        theirs = processor(images=full.convert("RGB"), return_tensors="np")["pixel_values"][0]
    # Normalized pixels span about 4 units; draft decoding moves them by a few hundredths.
    assert np.abs(ours - theirs).mean() < 0.03


async def test_concurrent_callers_are_batched_together(clip_dir: Path) -> None:
    async with serving_embed(clip_dir, batch_wait_ms=200, model_batch_size=16) as app:
        assert app.engine is not None
        before = app.engine.image_batches.items
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = Stub(channel)
            images = [encode(picture(c, shape=i)) for i, c in enumerate(["red", "blue"] * 6)]
            replies = await asyncio.gather(
                *(stub.EmbedImages(pb.EmbedImagesRequest(images=[d])) for d in images)
            )
        assert all(len(r.embeddings[0].values) == 64 for r in replies)
        stats = app.engine.image_batches
        assert stats.items - before == 12
        assert max(stats.sizes) >= 4, stats.sizes  # 12 callers, far fewer forward passes


async def test_a_full_queue_answers_resource_exhausted_at_once_and_recovers(
    clip_dir: Path,
) -> None:
    async with serving_embed(clip_dir, queue_size=4, max_batch_size=4, batch_wait_ms=50) as app:
        data = encode(picture("red", size=(400, 300)))
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = Stub(channel)
            outcomes = await asyncio.gather(
                *(stub.EmbedImages(pb.EmbedImagesRequest(images=[data] * 3)) for _ in range(20)),
                return_exceptions=True,
            )
            rejected = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
            served = [o for o in outcomes if isinstance(o, pb.EmbedImagesResponse)]
            assert rejected
            assert served
            assert {r.code() for r in rejected} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "busy" in (rejected[0].details() or "")
            after = await stub.EmbedImages(pb.EmbedImagesRequest(images=[data]))
            assert len(after.embeddings[0].values) == 64


async def test_health_is_not_serving_until_the_model_is_loaded(clip_dir: Path) -> None:
    app = EmbedApp(embed_settings(clip_dir))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="imagesearch.v1.EmbedService")
            before = await health.Check(request)
            assert before.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await Stub(channel).GetModelInfo(pb.GetModelInfoRequest())
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            await app.load()
            after = await health.Check(request)
            assert after.status == health_pb2.HealthCheckResponse.SERVING
            overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert overall.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.stop(0)


async def test_reflection_lists_the_service_for_generic_tools(embed_app: EmbedApp) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = grpc.insecure_channel(embed_app.address)
    try:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = await asyncio.to_thread(lambda: list(database.get_services()))
        assert "imagesearch.v1.EmbedService" in services
        assert "grpc.health.v1.Health" in services
    finally:
        channel.close()
