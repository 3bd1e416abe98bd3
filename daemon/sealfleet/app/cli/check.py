"""``sealfleet check``: would these SealedSecrets unseal in their clusters? (a CI gate)

Offline validation without the private keys on the CI runner: the files are parsed
here, and only their SealedSecret documents are sent to the running daemon (its API:
the socket by default, ``-c CONFIG`` to find it, the read token over TCP), which
attributes each item with the fleet's keys and answers, per document and cluster,
whether the cluster holds the key that sealed every item under the right scope label
and whether it is sealed with the cluster's current key.  Other documents (a plaintext
Secret included) never leave this process, and nothing decrypted comes back.

Exit codes: 0 every document would unseal, 1 one would not (or cannot be vouched for),
2 a file cannot be read or parsed, or a usage error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sealfleet.app.cli.main import DEFAULT_CONFIG_PATH
from sealfleet.errors import InputError

# The daemon takes bodies up to 1 MiB; stay well below it per request.
_MAX_REQUEST_BYTES = 768 * 1024
_MAX_REQUEST_DOCUMENTS = 500


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check", help="would these SealedSecrets unseal in their clusters? (asks the daemon; "
                      "exit 1 if one would not)")
    parser.add_argument("-f", "--filename", action="extend", nargs="+", required=True,
                        metavar="FILE", help="YAML or JSON manifest files ('-' = stdin)")
    parser.add_argument("--cluster", action="append", default=[], metavar="NAME",
                        help="a cluster that must unseal every document (repeatable); "
                             "default: every configured cluster, one of which must")
    parser.add_argument("--require-current", action="store_true",
                        help="also fail a document not sealed with the cluster's current key")
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"daemon config file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.set_defaults(handler=_check)


def _documents(names: list[str]) -> tuple[list[dict[str, Any]], int]:
    """The SealedSecret documents of the files, as check entries, and how many others."""
    from sealfleet.adapters import files
    from sealfleet.adapters.git import manifests
    from sealfleet.domain import documents

    entries: list[dict[str, Any]] = []
    ignored = 0
    for name in names:
        source = files.read_input(name)
        for index, doc in enumerate(documents.parse_documents(source.content,
                                                              source=source.name)):
            if manifests.is_sealed_secret(doc):
                entries.append({"source": source.name, "document": index, "object": doc})
            else:
                ignored += 1
    return entries, ignored


def _chunks(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    chunks: list[list[dict[str, Any]]] = []
    size = 0
    for entry in entries:
        length = len(json.dumps(entry))
        if length > _MAX_REQUEST_BYTES:
            raise InputError(f"{entry['source']}: document {entry['document']}: too large to "
                             "check (over 768 KiB)")
        if not chunks or size + length > _MAX_REQUEST_BYTES \
                or len(chunks[-1]) >= _MAX_REQUEST_DOCUMENTS:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += length
    return chunks


def _check(args: argparse.Namespace) -> int:
    import asyncio

    from sealfleet.app.cli.daemon import _client
    from sealfleet.app.config import load_settings

    settings = load_settings(args.config)
    for name in args.cluster:
        if settings.cluster(name) is None:
            raise InputError(f"--cluster: {name!r} is not a cluster of {args.config}")
    entries, ignored = _documents(args.filename)
    client = _client(settings)

    async def ask() -> list[dict[str, Any]]:
        return [await client.post_json("/api/v1/check", {
            "documents": chunk, "clusters": args.cluster,
            "require_current": args.require_current}) for chunk in _chunks(entries)]

    answers = asyncio.run(ask()) if entries else []
    result = {
        "ok": all(a["ok"] for a in answers),
        "clusters": answers[0]["clusters"] if answers else list(args.cluster),
        "require_current": args.require_current,
        "documents": [d for a in answers for d in a["documents"]],
        "ignored_documents": ignored,
        "errors": [e for a in answers for e in a["errors"]],
    }
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0 if result["ok"] else 1


def _yes_no(value: bool | None) -> str:
    return "yes" if value is True else "no" if value is False else "cannot tell"


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    table = Table(title="sealfleet check", title_justify="left")
    for column in ("document", "sealed secret", "cluster", "unseals", "current key",
                   "state", "verdict"):
        table.add_column(column)
    reasons: list[str] = []
    for doc in result["documents"]:
        where = f"{doc['source']}#{doc['document']}"
        name = f"{doc['namespace']}/{doc['name']}" if doc["namespace"] else doc["name"]
        for verdict in doc["clusters"]:
            table.add_row(where, name, verdict["cluster"], _yes_no(verdict["decryptable"]),
                          _yes_no(verdict["current"]), verdict["state"],
                          "[green]ok[/]" if doc["ok"] else "[red]fails[/]")
            reasons.extend(f"{where} {verdict['cluster']}: {reason}"
                           for reason in verdict["reasons"])
    console.print(table)
    for line in reasons:
        console.print(line, markup=False)
    failing = sum(1 for d in result["documents"] if not d["ok"])
    console.print(f"{len(result['documents'])} SealedSecrets checked, {failing} would fail; "
                  f"{result['ignored_documents']} other documents ignored", markup=False)
