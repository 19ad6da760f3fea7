"""`python -m search_service`: serve image search over gRPC until SIGTERM."""

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

from search_service.app import SearchApp
from search_service.config import SearchSettings
from search_service.errors import SearchError

log = logging.getLogger("search_service")


async def _main(settings: SearchSettings) -> int:
    stopping = stop_requested()
    try:
        app = SearchApp(settings)
        await app.start()
        await app.serve_until(stopping)
    except (SearchError, SecurityConfigError, OSError) as exc:
        # The store cannot serve as configured (key, metric, dimension): say why and stop.
        log.error("search_service cannot start: %s", exc)
        return 2
    return 0


def main() -> None:
    settings = SearchSettings()
    configure_logging(settings.log_level)
    init_grpc()
    if settings.log_level.upper() != "DEBUG":
        # httpx and the Pinecone SDK log every request at INFO; ours say what matters.
        for chatty in ("httpx", "pinecone"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    sys.exit(asyncio.run(_main(settings)))


if __name__ == "__main__":
    main()
