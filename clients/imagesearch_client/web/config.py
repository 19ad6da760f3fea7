"""The gallery's settings: command-line flags first, then WEB_* variables."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ADDR = "127.0.0.1:8080"
DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HEADER_TIMEOUT_S = 10.0


class WebConfigError(Exception):
    """Settings the gallery cannot start with; the message says what to change."""


def _variable(name: str, doc: str) -> dict[str, str]:
    """A field's environment variable and its meaning (docs/configuration.md shows them)."""
    return {"variable": name, "doc": doc}


@dataclass(frozen=True)
class WebSettings:
    root: Path
    addr: str = field(default=DEFAULT_ADDR, metadata=_variable(
        "WEB_ADDR", "Where the gallery listens (host:port)."))  # fmt: skip
    cifar: tuple[Path, ...] = ()
    password: str | None = field(default=None, repr=False, metadata=_variable(
        "WEB_PASSWORD", "Required for a non-loopback WEB_ADDR: the page asks for it (HTTP "
        "basic auth, any user name)."))  # fmt: skip
    max_upload_mb: int = field(default=DEFAULT_MAX_UPLOAD_MB, metadata=_variable(
        "WEB_MAX_UPLOAD_MB", "Largest image a visitor may search with."))  # fmt: skip
    target: str | None = None
    title: str = "imagesearch"
    allowed_hosts: frozenset[str] = field(default=frozenset(), metadata=_variable(
        "WEB_ALLOWED_HOSTS", "More host names the gallery answers to, comma-separated "
        "(behind a proxy or a DNS name); other Host headers get 421."))  # fmt: skip
    max_connections: int = field(default=DEFAULT_MAX_CONNECTIONS, metadata=_variable(
        "WEB_MAX_CONNECTIONS", "Connections held at once; more are closed on arrival."
    ))  # fmt: skip
    header_timeout_s: float = field(default=DEFAULT_HEADER_TIMEOUT_S, metadata=_variable(
        "WEB_HEADER_TIMEOUT_S", "A request's headers must arrive within this many seconds."
    ))  # fmt: skip

    @classmethod
    def from_env(
        cls,
        root: str | Path,
        *,
        cifar: tuple[str | Path, ...] = (),
        addr: str | None = None,
        target: str | None = None,
    ) -> WebSettings:
        hosts = os.environ.get("WEB_ALLOWED_HOSTS", "")
        return cls(
            root=Path(root),
            addr=addr or os.environ.get("WEB_ADDR") or DEFAULT_ADDR,
            cifar=tuple(Path(p) for p in cifar),
            password=os.environ.get("WEB_PASSWORD") or None,
            max_upload_mb=int(_positive("WEB_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB, int)),
            target=target,
            allowed_hosts=frozenset(h.strip().lower() for h in hosts.split(",") if h.strip()),
            max_connections=int(_positive("WEB_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, int)),
            header_timeout_s=_positive("WEB_HEADER_TIMEOUT_S", DEFAULT_HEADER_TIMEOUT_S, float),
        )

    @property
    def hosts(self) -> frozenset[str]:
        """Host names the gallery answers to beside loopback names and IP literals."""
        host, _ = self.host_port
        return self.allowed_hosts | {host.lower()}

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


def _positive(variable: str, default: float, kind: type[int] | type[float]) -> float:
    raw = os.environ.get(variable, str(default))
    try:
        value = kind(raw)
        if value <= 0:
            raise ValueError
    except ValueError:
        what = "a whole number >= 1" if kind is int else "a number > 0"
        raise WebConfigError(f"{variable} is {raw!r}; it must be {what}") from None
    return value
