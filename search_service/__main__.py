"""`python -m search_service`: serve image search over gRPC until SIGTERM."""

from __future__ import annotations

import asyncio
import sys

from imagesearch.serving import configure_logging

from search_service.app import SearchApp
from search_service.config import SearchSettings


async def _main(settings: SearchSettings) -> int:
    app = SearchApp(settings)
    await app.start()
    await app.run_until_signalled()
    return 0


def main() -> None:
    settings = SearchSettings()
    configure_logging(settings.log_level)
    sys.exit(asyncio.run(_main(settings)))


if __name__ == "__main__":
    main()
