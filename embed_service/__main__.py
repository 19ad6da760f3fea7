"""`python -m embed_service`: serve CLIP embeddings over gRPC until SIGTERM."""

from __future__ import annotations

import os

# Before gRPC loads: its C core logs every failed TLS handshake (a plaintext caller on a TLS
# port) at INFO; this service logs what matters in its own words. An operator's setting wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import asyncio
import logging
import sys

from imagesearch.security import SecurityConfigError
from imagesearch_serving.server import configure_logging, init_grpc, stop_requested

from embed_service.app import EmbedApp
from embed_service.config import EmbedSettings
from embed_service.errors import ModelLoadError

log = logging.getLogger("embed_service")


async def _main(settings: EmbedSettings) -> int:
    stopping = stop_requested()
    try:
        app = EmbedApp(settings)
        await app.start()
    except (SecurityConfigError, OSError) as exc:
        log.error("embed_service cannot start: %s", exc)
        return 2
    loading = asyncio.create_task(app.load())
    signalled = asyncio.create_task(stopping.wait())
    await asyncio.wait({loading, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        log.info("stopping before the model finished loading")
        loading.cancel()
        await app.stop(0)
        return 0
    signalled.cancel()
    try:
        loading.result()
    except ModelLoadError as exc:
        log.error("%s", exc)
        await app.stop(0)
        return 2
    await app.serve_until(stopping)
    return 0


def main() -> None:
    settings = EmbedSettings()
    configure_logging(settings.log_level)
    init_grpc()
    sys.exit(asyncio.run(_main(settings)))


if __name__ == "__main__":
    main()
