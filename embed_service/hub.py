"""Can the model hub be reached? Asked once, in a few seconds, before a hub id is loaded.

Without it, `from_pretrained` on a machine with no route to the hub retries for about
half a minute before it fails; with it, an unreachable hub means "use the local cache
only", which answers at once: the cached model, or a clear message.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

CHECK_TIMEOUT_S = 3.0


def offline_by_choice() -> bool:
    """HF_HUB_OFFLINE is set: the hub client will not try the network at all."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    """The hub's address (HF_ENDPOINT, or huggingface.co)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def unreachable_reason(url: str, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """None when a TCP connection to `url` opens within `timeout_s`; else why not.

    Name lookup is bounded too: it runs on a thread that is given up on at the deadline.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(None)
        except OSError as exc:
            outcome.append(str(exc) or type(exc).__name__)

    worker = threading.Thread(target=connect, name="hub-check", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:.0f} s"
