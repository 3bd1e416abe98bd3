"""``sealfleet reseal``: ask the running daemon to reseal what is stale (or compromised)
with the current key, in the clusters and in their GitOps repositories.

Like the key commands it talks to the daemon (the socket by default, ``-c CONFIG``; the
admin token over TCP), prints the job id, and with ``--wait`` follows the job: exit 0
when it succeeded, 1 when it failed, 2 when it was refused.  ``--dry-run`` prints the
plan instead (counts per cluster, repository and reason, then every SealedSecret it
would reseal; a table on a terminal) and journals nothing; ``-o json`` prints the
document the API answers (the job's, or the plan's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from sealfleet.app.cli import jobs

STATES = ("stale", "compromised", "failing", "unknown", "current")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "reseal", help="reseal stale SealedSecrets with the current key (a daemon job)")
    parser.add_argument("--cluster", action="append", metavar="NAME",
                        help="only this cluster (repeatable)")
    parser.add_argument("--repo", action="append", metavar="NAME",
                        help="only this repository (repeatable)")
    parser.add_argument("--namespace", action="append", metavar="PAT",
                        help="only namespaces matching this shell pattern (repeatable)")
    parser.add_argument("--name", action="append", metavar="PAT",
                        help="only names matching this shell pattern (repeatable)")
    parser.add_argument("--state", action="append", choices=STATES,
                        help="states to reseal (repeatable; default stale and compromised)")
    parser.add_argument("--no-git", action="store_true",
                        help="only in-cluster objects, no repository is written")
    parser.add_argument("--include-hinted", action="store_true",
                        help="reseal in the cluster objects only hinted to be GitOps-managed "
                             "(app.kubernetes.io/instance alone, which Helm sets too)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan; nothing is journaled or written")
    parser.add_argument("--wait", action="store_true",
                        help="follow the job; exit 0 succeeded, 1 failed")
    jobs._config_arg(parser)
    jobs._output_arg(parser)
    parser.set_defaults(handler=_reseal)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, values in (("clusters", args.cluster), ("repos", args.repo),
                        ("namespaces", args.namespace), ("names", args.name),
                        ("states", args.state)):
        if values:
            body[key] = list(dict.fromkeys(values))
    if args.no_git:
        body["include_git"] = False
    if args.include_hinted:
        body["include_hinted"] = True
    if args.dry_run:
        body["dry_run"] = True
    return body


def _reseal(args: argparse.Namespace) -> int:
    client = jobs._client(args, admin=True)
    answer = asyncio.run(client.request_json("POST", "/api/v1/reseal", request_body(args)))
    if args.dry_run:
        _print_plan(answer, args.output)
        return 0
    if args.wait:
        return asyncio.run(jobs._follow(client, answer, args.output))
    jobs._print_job(answer, args.output, brief=True)
    return 0


def _print_plan(plan: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(plan, indent=2))
        return
    print(f"{plan['planned']} SealedSecret(s) to reseal ({plan['items']} items), "
          f"{plan['not_planned']} that cannot be")
    for title, key in (("cluster", "by_cluster"), ("repository", "by_repository"),
                       ("reason", "by_reason")):
        for where, count in plan[key].items():
            print(f"  {title} {where}: {count}")
    rows = [(r["ref"], r["reason"], r["target_key"], ",".join(r["old_keys"]) or "-")
            for r in plan["reseals"]]
    if sys.stdout.isatty() and rows:
        widths = [max(len(str(row[i])) for row in [("REF", "REASON", "", ""), *rows])
                  for i in range(2)]
        print(f"{'REF':<{widths[0]}}  {'REASON':<{widths[1]}}  TARGET KEY / OLD KEYS")
        for ref, reason, target, old in rows:
            print(f"{ref:<{widths[0]}}  {reason:<{widths[1]}}  {target} <- {old}")
    else:
        for ref, reason, target, old in rows:
            print(f"{ref}\t{reason}\t{target}\t{old}")
    for entry in plan["not_resealable"]:
        print(f"not resealable: {entry['ref']} ({entry['state']}): {entry['reason']}")
    for warning in plan["warnings"]:
        print(f"warning: {warning}")
