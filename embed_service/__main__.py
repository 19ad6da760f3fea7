"""`python -m embed_service`: serve CLIP embeddings over gRPC until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from imagesearch.serving import configure_logging

from embed_service.app import EmbedApp
from embed_service.config import EmbedSettings
from embed_service.errors import ModelLoadError


async def _main(settings: EmbedSettings) -> int:
    app = EmbedApp(settings)
    await app.start()
    try:
        await app.load()
    except ModelLoadError as exc:
        logging.getLogger("embed_service").error("%s", exc)
        await app.stop(0)
        return 2
    await app.run_until_signalled()
    return 0


def main() -> None:
    settings = EmbedSettings()
    configure_logging(settings.log_level)
    sys.exit(asyncio.run(_main(settings)))


if __name__ == "__main__":
    main()
