"""The gallery's settings: command-line flags first, then WEB_* variables."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ADDR = "127.0.0.1:8080"
DEFAULT_MAX_UPLOAD_MB = 20


class WebConfigError(Exception):
    """Settings the gallery cannot start with; the message says what to change."""


@dataclass(frozen=True)
class WebSettings:
    root: Path
    addr: str = DEFAULT_ADDR
    cifar: tuple[Path, ...] = ()
    password: str | None = field(default=None, repr=False)
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
    target: str | None = None
    title: str = "imagesearch"

    @classmethod
    def from_env(
        cls,
        root: str | Path,
        *,
        cifar: tuple[str | Path, ...] = (),
        addr: str | None = None,
        target: str | None = None,
    ) -> WebSettings:
        raw_mb = os.environ.get("WEB_MAX_UPLOAD_MB", str(DEFAULT_MAX_UPLOAD_MB))
        try:
            max_mb = int(raw_mb)
            if max_mb < 1:
                raise ValueError
        except ValueError:
            raise WebConfigError(
                f"WEB_MAX_UPLOAD_MB is {raw_mb!r}; it must be a whole number of megabytes >= 1"
            ) from None
        return cls(
            root=Path(root),
            addr=addr or os.environ.get("WEB_ADDR") or DEFAULT_ADDR,
            cifar=tuple(Path(p) for p in cifar),
            password=os.environ.get("WEB_PASSWORD") or None,
            max_upload_mb=max_mb,
            target=target,
        )

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.addr.rpartition(":")
        if not sep or not port.isdigit():
            raise WebConfigError(f"WEB_ADDR is {self.addr!r}; give host:port, e.g. {DEFAULT_ADDR}")
        return host.strip("[]") or "0.0.0.0", int(port)

    def check(self) -> None:
        """Raises WebConfigError for settings that would be unsafe or cannot work."""
        if not self.root.is_dir():
            raise WebConfigError(f"--root {self.root} is not a directory")
        for archive in self.cifar:
            if not archive.is_file():
                raise WebConfigError(f"--cifar {archive} is not a file")
        host, _ = self.host_port
        if not _loopback(host) and not self.password:
            raise WebConfigError(
                f"WEB_ADDR {self.addr} is reachable from other machines; set WEB_PASSWORD "
                "(the page then asks for it, HTTP basic auth) or listen on 127.0.0.1"
            )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
