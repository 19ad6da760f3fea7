"""Writes docs/configuration.md from the settings classes' field descriptions.

python scripts/config_doc.py          # rewrite the doc (make docs)
python scripts/config_doc.py --check  # exit 1 if the doc is stale (the suite runs this)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"

HEADER = """# Configuration

Every setting is an environment variable (the services also read `.env` in the working
directory). Generated from the settings classes by `make docs`; a test fails when this
file is stale, so edit the field's description, not this file.
"""

# Read by the clients (messages.connection) and by scripts/run.sh, not by a settings class.
CLIENT = [
    (
        "SEARCH_ADDR",
        "127.0.0.1:50052",
        "Where the CLI, the Python clients and the gallery "
        "find search_service (the CLI's `--target` and the clients' `target` win).",
    ),
    ("IMAGESEARCH_TOKEN", "", "The bearer token clients send (`--token`, `token=`)."),
    ("IMAGESEARCH_TLS_CA", "", "Dial search_service over TLS, verifying it with this CA."),
    ("IMAGESEARCH_TLS_CERT", "", "Client certificate for mutual TLS."),
    ("IMAGESEARCH_TLS_KEY", "", "The private key of IMAGESEARCH_TLS_CERT."),
]
RUN = [
    ("DIR", "", "The folder the gallery indexes and serves (`make run DIR=~/Pictures`)."),
    ("WEB_ROOT", "", "The same as DIR, as a variable; unset and without DIR, an empty "
     "DATA_DIR/pictures (never the checkout itself)."),
    ("EMBED_REPLICAS", "1", "embed_service replicas to start, on consecutive ports from "
     "EMBED_ADDR's (then 127.0.0.1:50061), all behind search_service's EMBED_TARGET."),
]  # fmt: skip


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if DOC.read_text() != text:
            print(f"{DOC} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    return 0


def render() -> str:
    # Imported here: the script runs from the repository root, which is not a package.
    from embed_service.config import EmbedSettings  # noqa: I001
    from imagesearch_client.web.config import WebSettings
    from search_service.config import SearchSettings

    sections = [
        HEADER,
        _table("embed_service", _settings_rows(EmbedSettings)),
        _table("search_service", _settings_rows(SearchSettings)),
        _table("The web gallery", _dataclass_rows(WebSettings)),
        _table("Clients (CLI, Python clients, gallery)", CLIENT),
        _table("`make run` (scripts/run.sh)", RUN),
    ]
    return "\n".join(sections)


def _settings_rows(settings: type[BaseSettings]) -> list[tuple[str, str, str]]:
    prefix = str(settings.model_config.get("env_prefix") or "")
    return [
        (_variable(name, field, prefix), _default(field.default), field.description or "")
        for name, field in settings.model_fields.items()
    ]


def _dataclass_rows(settings: type[Any]) -> list[tuple[str, str, str]]:
    return [
        (field.metadata["variable"], _default(field.default), field.metadata["doc"])
        for field in dataclasses.fields(settings)
        if "variable" in field.metadata
    ]


def _variable(name: str, field: FieldInfo, prefix: str) -> str:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{prefix}{name}".upper()


def _default(value: Any) -> str:
    if value is None or value == frozenset():
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _table(title: str, rows: list[tuple[str, str, str]]) -> str:
    lines = [f"## {title}", "", "| variable | default | meaning |", "|---|---|---|"]
    lines += [
        f"| `{name}` | {f'`{default}`' if default else ''} | {doc} |" for name, default, doc in rows
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
