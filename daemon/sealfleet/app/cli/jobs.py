"""``sealfleet jobs list|show|wait``, ``sealfleet audit``, and the key commands that start
jobs in the running daemon (``keys sync|renew|compromise|retire|adopt``).

Every mutation runs inside the daemon as a journaled job; these commands only ask for
it (over the socket by default, like ``status``; ``-c CONFIG`` as everywhere), print the
job id, and with ``--wait`` follow it to its end: exit 0 when it succeeded, 1 when it
failed, 2 when it was refused.  ``-o json`` prints the job document (the finished one
after ``--wait``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.parse
from typing import Any

from sealfleet.app.cli.main import DEFAULT_CONFIG_PATH
from sealfleet.errors import InputError

_POLL_SECONDS = 0.5
_BAR = 24           # characters of the progress bar
_BUSY_SHOWN = 3     # clusters still at work named on the progress line
_FINISHED = frozenset({"succeeded", "failed", "cancelled"})
# Counts a step's detail may carry (a reseal's), printed after the step when not zero.
_STEP_COUNTS = ("planned", "resealed", "rotated_via_controller", "skipped",
                "conflicts_replanned", "gone", "failed")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=str(DEFAULT_CONFIG_PATH), metavar="FILE",
                        help=f"daemon config (default {DEFAULT_CONFIG_PATH})")


def _output_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text",
                        help="text (default) or json (the job document)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser("jobs", help="list, show and wait for the daemon's jobs")
    commands = group.add_subparsers(dest="jobs_command", metavar="COMMAND",
                                    parser_class=type(group))
    listing = commands.add_parser("list", help="jobs, newest first")
    listing.add_argument("--state", choices=sorted(_FINISHED | {"pending", "running"}))
    show = commands.add_parser("show", help="one job with its steps")
    show.add_argument("id")
    wait = commands.add_parser("wait", help="wait for a job to end; exit 0 succeeded, 1 failed")
    wait.add_argument("id")
    for parser, handler in ((listing, _list), (show, _show), (wait, _wait)):
        _config_arg(parser)
        _output_arg(parser)
        parser.set_defaults(handler=handler)
    audit = subparsers.add_parser("audit", help="the audit log of every mutation")
    audit.add_argument("--since", metavar="TIME", help="only entries at or after (ISO 8601)")
    _config_arg(audit)
    _output_arg(audit)
    audit.set_defaults(handler=_audit)


def add_key_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``keys`` subcommands that start jobs in the daemon."""
    sync = commands.add_parser("sync", help="sync the fleet key set to every cluster "
                                            "(the first master key is made if none exists)")
    renew = commands.add_parser("renew", help="a new master key, synced to every cluster")
    compromise = commands.add_parser(
        "compromise", help="mark a key compromised and renew; lists what it sealed")
    compromise.add_argument("fingerprint", metavar="FP")
    retire = commands.add_parser("retire", help="take a key out of every cluster "
                                                "(refused while anything needs it)")
    retire.add_argument("fingerprint", metavar="FP")
    retire.add_argument("--purge", action="store_true",
                        help="also delete it from the keystore (default: kept for recovery)")
    adopt = commands.add_parser("adopt", help="take a cluster's keys into fleet custody")
    adopt.add_argument("--cluster", required=True, metavar="NAME")
    adopt.add_argument("--share", action="store_true",
                       help="also write them to the other clusters")
    for parser in (sync, renew, compromise, retire, adopt):
        _config_arg(parser)
        _output_arg(parser)
        parser.add_argument("--wait", action="store_true",
                            help="follow the job; exit 0 succeeded, 1 failed")
        parser.set_defaults(handler=_submit_key_job)
    listing = commands.add_parser("list", help="every key the fleet knows: validity, state, "
                                               "source, where held, what it sealed")
    _config_arg(listing)
    _output_arg(listing)
    listing.set_defaults(handler=_list_keys)
    cert = commands.add_parser("cert", help="print the fleet master certificate (the one "
                                            "GET /api/v1/cert.pem serves)")
    cert.add_argument("--cluster", metavar="NAME", help="that cluster's sealing certificate")
    _config_arg(cert)
    cert.set_defaults(handler=_print_cert)


def _list_keys(args: argparse.Namespace) -> int:
    found = asyncio.run(_client(args).get_json("/api/v1/keys"))
    if args.output == "json":
        print(json.dumps(found, indent=2))
        return 0
    for key in found["keys"]:
        master = " master" if key.get("fleet_master") else ""
        print(f"{key['fingerprint']}  {key['state']:<11} {key['source']:<9} "
              f"{key['not_before'][:10]}..{key['not_after'][:10]}  "
              f"{key.get('items', 0):>6} items  {','.join(key.get('clusters', [])) or '-'}"
              f"{master}")
    return 0


def _print_cert(args: argparse.Namespace) -> int:
    query = f"?cluster={urllib.parse.quote(args.cluster)}" if args.cluster else ""
    pem = asyncio.run(_client(args).get_text(f"/api/v1/cert.pem{query}"))
    print(pem, end="")
    return 0


def _key_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    command = args.keys_command
    if command in ("compromise", "retire"):
        fingerprint = args.fingerprint
        if not fingerprint.startswith("SHA256:"):
            raise InputError(f"{fingerprint!r} is not a key fingerprint (SHA256:...)")
        path = f"/api/v1/keys/{urllib.parse.quote(fingerprint, safe=':')}/{command}"
        return path, {"purge": args.purge} if command == "retire" else {}
    if command == "adopt":
        return "/api/v1/keys/adopt", {"cluster": args.cluster, "share": args.share}
    return f"/api/v1/keys/{command}", {}


def _client(args: argparse.Namespace, *, admin: bool = False) -> Any:
    from sealfleet.app.cli import daemon
    from sealfleet.app.config import load_settings

    return daemon._client(load_settings(args.config), admin=admin)


def _submit_key_job(args: argparse.Namespace) -> int:
    path, body = _key_request(args)
    client = _client(args, admin=True)
    job = asyncio.run(client.request_json("POST", path, body))
    if args.wait:
        return asyncio.run(_follow(client, job, args.output))
    _print_job(job, args.output, brief=True)
    return 0


def _list(args: argparse.Namespace) -> int:
    query = f"?state={args.state}" if args.state else ""
    found = asyncio.run(_client(args).get_json(f"/api/v1/jobs{query}"))
    if args.output == "json":
        print(json.dumps(found, indent=2))
        return 0
    for job in found["jobs"]:
        print(f"{job['id']}  {job['kind']:<11} {job['state']:<10} {job['created_at']}  "
              f"{job['actor']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    job = asyncio.run(_client(args).get_json(f"/api/v1/jobs/{_job_id(args.id)}"))
    _print_job(job, args.output)
    return 0


def _wait(args: argparse.Namespace) -> int:
    client = _client(args)
    job = asyncio.run(client.get_json(f"/api/v1/jobs/{_job_id(args.id)}"))
    return asyncio.run(_follow(client, job, args.output))


def _job_id(text: str) -> str:
    if not text.isascii() or not text.isalnum():
        raise InputError(f"{text!r} is not a job id")
    return text


async def _follow(client: Any, job: dict[str, Any], output: str) -> int:
    """Poll the job until it ends; progress on a terminal; exit code from its outcome."""
    tty = sys.stderr.isatty() and output != "json"
    shown = ""
    while job["state"] not in _FINISHED:
        if tty:
            line = "\r" + progress_line(job) + "\x1b[K"   # erase what a longer line left
            if line != shown:
                print(line, end="", file=sys.stderr, flush=True)
                shown = line
        await asyncio.sleep(_POLL_SECONDS)
        job = await client.get_json(f"/api/v1/jobs/{job['id']}")
    if tty and shown:
        print("\r" + progress_line(job) + "\x1b[K", file=sys.stderr, flush=True)
    _print_job(job, output)
    return 0 if job["state"] == "succeeded" else 1


def progress_line(job: dict[str, Any]) -> str:
    """One line of progress: objects finished of planned (a bar, counts, the clusters
    still at work) for a job with a per-object journal, else its steps."""
    counts = job.get("counts", {})
    finished = sum(counts.get(s, 0) for s in ("done", "skipped", "failed"))
    steps = f"{finished}/{sum(counts.values())} steps"
    head = f"{job['kind']} {job['id'][:8]} {job['state']}"
    progress = job.get("progress")
    if not isinstance(progress, dict):
        return f"{head}: {steps}"
    total = progress.get("total") or {}
    planned = int(total.get("planned", 0))
    ended = planned - int(total.get("remaining", 0))
    filled = _BAR * ended // planned if planned else _BAR
    busy = [f"{name} {c['planned'] - c['remaining']}/{c['planned']}"
            for name, c in sorted((progress.get("clusters") or {}).items())
            if c.get("remaining")][:_BUSY_SHOWN]
    extra = "".join(f", {total[k]} {k}" for k in ("failed", "conflicts") if total.get(k))
    return (f"{head} [{'#' * filled}{'.' * (_BAR - filled)}] {ended}/{planned} objects "
            f"({total.get('done', 0)} done, {total.get('skipped', 0)} skipped{extra}), "
            f"{steps}" + (f"; {', '.join(busy)}" if busy else ""))


def _print_job(job: dict[str, Any], output: str, *, brief: bool = False) -> None:
    if output == "json":
        print(json.dumps(job, indent=2))
        return
    print(job["id"])
    if brief:
        return
    print(f"  {job['kind']} {job['state']} (by {job['actor']}, {job['created_at']})")
    if job.get("error"):
        print(f"  error: {job['error']}")
    progress = job.get("progress")
    if isinstance(progress, dict):
        for title, key in (("cluster", "clusters"), ("repository", "repositories")):
            for name, c in sorted((progress.get(key) or {}).items()):
                print(f"  {title} {name}: {c['planned']} planned, {c['done']} done, "
                      f"{c['skipped']} skipped, {c['failed']} failed, "
                      f"{c['conflicts']} conflicts" + (f", {c['remaining']} to go"
                                                       if c.get("remaining") else ""))
    for step in job.get("steps", []):
        error = f" - {step['error']}" if step.get("error") else ""
        detail = step.get("detail") or {}
        counts = ", ".join(f"{key.replace('_', ' ')} {detail[key]}" for key in _STEP_COUNTS
                           if isinstance(detail.get(key), int) and detail[key])
        print(f"  {step['state']:<8} {step['ref']}{error}" + (f" ({counts})" if counts else ""))
        for failure in detail.get("failures") or []:
            print(f"           {failure.get('ref')}: {failure.get('reason')}")


def _audit(args: argparse.Namespace) -> int:
    query = f"?since={urllib.parse.quote(args.since)}" if args.since else ""
    found = asyncio.run(_client(args).get_json(f"/api/v1/audit{query}"))
    if args.output == "json":
        print(json.dumps(found, indent=2))
        return 0
    for entry in found["entries"]:
        print(f"{entry['at']}  {entry['actor']:<16} {entry['event']:<24} "
              f"{json.dumps(entry['details'], sort_keys=True)}")
    return 0
