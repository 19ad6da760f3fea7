"""`imagesearch reembed`: moves a store to a new model (the work itself: reembed.py)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from imagesearch_client.client import ImageSearchClient
from imagesearch_client.reembed import Sources, reembed, total

Command = Callable[..., argparse.ArgumentParser]


def add_reembed_command(command: Command) -> None:
    again = command(
        "reembed", _reembed,
        "re-embed every record of this stack's store with the model of the stack at --to, "
        "writing it there with the same id, namespace and metadata (resumable)",
        namespace=False,
    )  # fmt: skip
    again.add_argument("--to", required=True, metavar="ADDR",
                       help="the new stack's search_service (running the new model)")  # fmt: skip
    again.add_argument("--to-token", help="its bearer token, if not the same (prefer "
                       "$IMAGESEARCH_TOKEN when both take one)")  # fmt: skip
    again.add_argument("--root", help="the folder the records' paths are under")
    again.add_argument("--cifar", action="append", default=[], metavar="ARCHIVE",
                       help="CIFAR archive(s) that CIFAR records were drawn from")  # fmt: skip
    again.add_argument(
        "--namespace", dest="namespaces", action="append", metavar="NS",
        help="only this namespace (repeat for several; default: all)",
    )  # fmt: skip
    again.add_argument("--quiet", action="store_true", help="no progress bar")


def _reembed(client: ImageSearchClient, args: argparse.Namespace) -> int:
    if args.to == client.target:
        raise ValueError("--to names the stack the records are read from; give the new one")
    sources = Sources(root=Path(args.root) if args.root else None,
                      cifar=tuple(Path(p) for p in args.cifar))  # fmt: skip
    for archive in sources.cifar:
        if not archive.is_file():
            raise ValueError(f"--cifar {archive} is not a file")
    with ImageSearchClient(
        args.to, timeout_s=args.timeout, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
        tls_key=args.tls_key, token=args.to_token or args.token,
    ) as new:  # fmt: skip
        new.wait_ready(timeout_s=args.timeout)
        was, now = client.stats(), new.stats()
        progress = tqdm(total=total(was, args.namespaces), unit="rec", file=sys.stderr,
                        desc=f"re-embedding into {args.to}", disable=args.quiet)  # fmt: skip
        report = reembed(client, new, namespaces=args.namespaces, sources=sources,
                         progress=progress.update)  # fmt: skip
        progress.close()
    if args.json:
        print(json.dumps({**asdict(report), "from": was.model_id, "to": now.model_id}, indent=2))
    else:
        print(f"{was.model_id or '-'} -> {now.model_id or '-'}: {report.reembedded} re-embedded, "
              f"{report.already} already there, {len(report.missing)} without a source, "
              f"{len(report.failed)} failed (of {report.listed} records)")  # fmt: skip
        for item in report.missing:
            print(f"  missing {item['namespace'] or '(default)'}/{item['id']}: {item['why']}")
        for item in report.failed:
            print(f"  failed {item['namespace'] or '(default)'}/{item['id']}: "
                  f"{item['reason']}: {item['message']}")  # fmt: skip
    return 0 if report.complete else 1
