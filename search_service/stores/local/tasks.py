"""Work that must finish once begun, whatever happens to the caller."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


async def uncancellable(
    work: Coroutine[Any, Any, None], on_cancel: Callable[[], object] = lambda: None
) -> None:
    """Runs `work` to its end even if the caller is cancelled meanwhile (calling `on_cancel`
    then, so that the work may end sooner), then re-raises."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                break
            if not cancelled:
                on_cancel()
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError
