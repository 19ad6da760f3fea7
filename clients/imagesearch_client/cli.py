"""`imagesearch`: index folders and CIFAR archives, query, inspect a search_service, and
move its store to a new model (reembed).

Results go to stdout (a table, or one JSON document with --json); progress and
errors go to stderr. Exit status: 0 done; 1 nothing could be stored or the request
was refused; 2 the service could not be reached.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from imagesearch.security import SecurityConfigError
from tqdm import tqdm

from imagesearch_client.cli_common import json_filter, print_table
from imagesearch_client.cli_reembed import add_reembed_command
from imagesearch_client.cli_search import add_search_commands
from imagesearch_client.client import ImageRecord, ImageSearchClient
from imagesearch_client.errors import ImageSearchError, Unavailable
from imagesearch_client.indexing import BATCH, Dedup, IndexReport, records, under
from imagesearch_client.sources import (
    SourceImage,
    cifar_count,
    cifar_images,
    folder_images,
    image_files,
)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.handler is _web:  # no sync client: the gallery makes an async one
        web_code: int = _web(args)
        return web_code
    try:
        with ImageSearchClient(
            args.target,
            timeout_s=args.timeout,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            token=args.token,
        ) as client:
            code: int = args.handler(client, args)
            return code
    except Unavailable as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except SecurityConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImageSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for where, why in exc.fields.items():
            if why != exc.message:  # most violations are the message itself: said once
                print(f"  {why}" if why.startswith(where) else f"  {where}: {why}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# --- index ---------------------------------------------------------------------------


def _index(client: ImageSearchClient, args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    files = image_files(root)
    images = folder_images(root, files, label_from_dir=args.label_from_dir)
    return _ingest(client, args, images, len(files), f"indexing {root}")


def _index_cifar(client: ImageSearchClient, args: argparse.Namespace) -> int:
    path = Path(args.path)
    total = cifar_count(path, split=args.split)
    if args.limit:
        total = min(total, args.limit)
    images = itertools.islice(cifar_images(path, split=args.split), total)
    return _ingest(client, args, images, total, f"indexing {path.name}")


def _ingest(
    client: ImageSearchClient,
    args: argparse.Namespace,
    images: Iterable[SourceImage],
    total: int,
    title: str,
) -> int:
    client.wait_ready(timeout_s=args.timeout)
    report = IndexReport()
    progress = tqdm(total=total, desc=title, unit="img", file=sys.stderr, disable=args.quiet)
    batches = _new_batches(client, images, args.namespace, Dedup(report), progress)
    sent: dict[int, list[SourceImage]] = {}

    def requests() -> Iterator[list[ImageRecord]]:
        for n, batch in enumerate(batches):
            sent[n] = batch
            yield records(batch)

    for n, outcomes in enumerate(client.ingest(requests(), namespace=args.namespace)):
        report.count(sent.pop(n), outcomes)
        progress.update(len(outcomes))
    progress.close()
    _print_report(report, args.json)
    return 1 if report.failed_entirely else 0


def _new_batches(
    client: ImageSearchClient,
    images: Iterable[SourceImage],
    namespace: str,
    dedup: Dedup,
    progress: tqdm[Any],
) -> Iterator[list[SourceImage]]:
    """Batches of images that are not stored yet (nor repeated within this run)."""
    iterator = iter(images)
    while chunk := list(itertools.islice(iterator, BATCH)):
        stored = {r.id for r in client.fetch([s.id for s in chunk], namespace=namespace)}
        fresh = dedup.fresh(chunk, stored)
        progress.update(len(chunk) - len(fresh))
        yield from under(fresh)


def _print_report(report: IndexReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(report), indent=2))
        return
    print(
        f"stored {report.stored}, already stored {report.skipped}, "
        f"failed {len(report.failures)} (of {report.seen} images)"
    )
    for failure in report.failures:
        print(f"  {failure['name']}: {failure['reason']}: {failure['message']}")


# --- query ---------------------------------------------------------------------------


# --- stats, fetch, delete ----------------------------------------------------------------


def _stats(client: ImageSearchClient, args: argparse.Namespace) -> int:
    stats = client.stats()
    if args.json:
        print(json.dumps(asdict(stats), indent=2))
        return 0
    print(f"store: {stats.store}; model: {stats.model_id or '-'} ({stats.dimension}-d)")
    print(f"fingerprint: {stats.model_fingerprint or '-'}")
    rows = [(name, str(count)) for name, count in sorted(stats.namespaces.items())]
    print_table(("namespace", "vectors"), [*rows, ("total", str(stats.total))])
    return 0


def _fetch(client: ImageSearchClient, args: argparse.Namespace) -> int:
    records = client.fetch(args.ids, namespace=args.namespace)
    out = [
        {"id": r.id, "metadata": r.metadata, **({"values": r.values} if args.values else {})}
        for r in records
    ]
    missing = sorted(set(args.ids) - {r.id for r in records})
    print(json.dumps({"records": out, "missing": missing}, indent=2))
    return 0 if records or not args.ids else 1


def _delete(client: ImageSearchClient, args: argparse.Namespace) -> int:
    if args.ids:
        client.delete(ids=args.ids, namespace=args.namespace)
    elif args.filter:
        client.delete(filter=json_filter(args.filter), namespace=args.namespace)
    else:
        client.delete(delete_all=True, namespace=args.namespace)
    print("deleted", file=sys.stderr)
    return 0


# --- web -------------------------------------------------------------------------------


def _web(args: argparse.Namespace) -> int:
    from imagesearch_client.web.app import serve_web  # the web stack only when asked for

    code: int = serve_web(args.root, cifar=tuple(args.cifar), addr=args.addr, target=args.target)
    return code


# --- export, import ------------------------------------------------------------------


def _transfer() -> Any:
    """export/import's module: it needs pyarrow, the client's `transfer` extra."""
    try:
        from imagesearch_client import transfer
    except ImportError as exc:
        raise ValueError(
            f"export and import need pyarrow ({exc}): pip install 'imagesearch-client[transfer]'"
        ) from None
    return transfer


def _export(client: ImageSearchClient, args: argparse.Namespace) -> int:
    export_records = _transfer().export_records
    out = Path(args.out)
    with tqdm(desc="export", unit="rec", disable=args.quiet, file=sys.stderr) as bar:

        def total(n: int) -> None:
            bar.total = n
            bar.refresh()

        info = export_records(
            client, out, namespaces=args.namespaces or (), progress=bar.update, total=total
        )
    summary = {"file": str(out), "records": info.rows, "namespaces": info.namespaces,
               "model_id": info.model_id, "model_fingerprint": info.model_fingerprint}  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"exported {info.rows} records of {info.model_id} to {out}", file=sys.stderr)
    return 0


def _import(client: ImageSearchClient, args: argparse.Namespace) -> int:
    transfer = _transfer()
    path = Path(args.file)
    info = transfer.read_info(path)
    with tqdm(
        desc="import", unit="rec", total=info.rows, initial=args.skip, disable=args.quiet,
        file=sys.stderr,
    ) as bar:  # fmt: skip
        try:
            report = transfer.import_records(client, path, skip=args.skip, progress=bar.update)
        except transfer.ImportInterrupted as stopped:
            bar.close()
            print(
                f"error: {stopped.cause}\nthe import stopped; every row before "
                f"{stopped.report.resume_at} is stored. Run the same command again (upserts "
                f"overwrite by id: nothing is duplicated), or add --skip "
                f"{stopped.report.resume_at}",
                file=sys.stderr,
            )
            return 2 if isinstance(stopped.cause, Unavailable) else 1
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(f"imported {report.stored} of {report.rows} records into {client.target}",
              file=sys.stderr)  # fmt: skip
        for failure in report.failures[:20]:
            print(f"  {failure['namespace']}/{failure['id']}: {failure['reason']} "
                  f"{failure['message']}", file=sys.stderr)  # fmt: skip
    return 0 if not report.failures else 1


# --- arguments -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagesearch", description=__doc__)
    parser.add_argument(
        "--target", help="search_service address (default: $SEARCH_ADDR or 127.0.0.1:50052)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    parser.add_argument(
        "--tls-ca", help="CA to verify search_service with (default: $IMAGESEARCH_TLS_CA)"
    )
    parser.add_argument("--tls-cert", help="client certificate for mTLS ($IMAGESEARCH_TLS_CERT)")
    parser.add_argument("--tls-key", help="its private key ($IMAGESEARCH_TLS_KEY)")
    parser.add_argument(
        "--token", help="bearer token (default: $IMAGESEARCH_TOKEN; prefer the variable)"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str, handler: Any, help: str, *, namespace: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        if namespace:
            sub.add_argument("--namespace", default="", help='namespace ("" is the default)')
        sub.add_argument("--json", action="store_true", help="print one JSON document")
        return sub

    index = command("index", _index, "index every image under DIR (recursively)")
    index.add_argument("dir", metavar="DIR")
    index.add_argument(
        "--label-from-dir", action="store_true", help="store each parent folder's name as label"
    )
    index.add_argument("--quiet", action="store_true", help="no progress bar")

    cifar = command("index-cifar", _index_cifar, "index a CIFAR-10/100 python-format archive")
    cifar.add_argument("path", metavar="ARCHIVE", help="cifar-10-python.tar.gz or cifar-100-...")
    cifar.add_argument("--split", choices=("train", "test"), default="train")
    cifar.add_argument("--limit", type=int, default=0, help="index only the first N images")
    cifar.add_argument("--quiet", action="store_true", help="no progress bar")

    add_search_commands(command)

    command("stats", _stats, "counts per namespace and the model that filled the store")

    fetch = command("fetch", _fetch, "print stored records by id")
    fetch.add_argument("ids", nargs="+", metavar="ID")
    fetch.add_argument("--values", action="store_true", help="include the vectors")

    delete = command("delete", _delete, "delete records by id, by filter, or --all")
    chosen = delete.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--ids", nargs="+", metavar="ID")
    chosen.add_argument("--filter", help="a Pinecone filter")
    chosen.add_argument("--all", action="store_true", help="everything in the namespace")

    export = command(
        "export", _export, "write every record (vectors included) to a Parquet file",
        namespace=False,
    )  # fmt: skip
    export.add_argument("out", metavar="OUT", help="the file to write, e.g. store.parquet")
    export.add_argument(
        "--namespace", dest="namespaces", action="append", metavar="NS",
        help="export only this namespace (repeat for several; default: all)",
    )  # fmt: skip
    export.add_argument("--quiet", action="store_true", help="no progress bar")

    load = command(
        "import", _import, "upsert the records of an export into the service's store",
        namespace=False,
    )  # fmt: skip
    load.add_argument("file", metavar="IN", help="a file written by `imagesearch export`")
    load.add_argument("--skip", type=int, default=0, help="start at this row (to resume)")
    load.add_argument("--quiet", action="store_true", help="no progress bar")

    add_reembed_command(command)

    web = command(
        "web", _web, "serve the web gallery (browse, Index, click for similar images)",
        namespace=False,
    )  # fmt: skip
    web.add_argument("--root", required=True, help="the folder the Index button indexes")
    web.add_argument("--cifar", action="append", default=[], metavar="ARCHIVE",
                     help="CIFAR archive(s) that CIFAR records are drawn from")  # fmt: skip
    web.add_argument("--addr", help="where to listen (default: $WEB_ADDR or 127.0.0.1:8080)")
    return parser


if __name__ == "__main__":
    main()
