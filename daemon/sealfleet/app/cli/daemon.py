"""Daemon commands: ``run`` (the service), ``status`` and ``staleness`` (its clients), ``demo``.

The client commands read the same config file as the daemon to find its API: the unix
socket when it exists (no token needed), else the TCP listener with the read token.
``staleness --fail-on`` turns the report into an exit code for CI gates.  ``demo`` starts
an emulated fleet (the sandbox, imported lazily: the daemon's runtime never imports it)
plus the daemon in this process, so ``sealfleet demo --once`` shows the whole product on
a fresh install.

Module-level imports stay light (no pydantic, asyncio or aiohttp): ``sealfleet run``
installs its signal handlers before paying for them (see :class:`EarlySignals`).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from sealfleet import errors
from sealfleet.app.cli.main import DEFAULT_CONFIG_PATH
from sealfleet.domain import staleness
from sealfleet.domain.staleness import FINDINGS
from sealfleet.errors import InputError

if TYPE_CHECKING:
    from sealfleet.app.config import Settings

_STATES = tuple(state.value for state in staleness.SHOWN_STATES)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def config_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                            help=f"daemon config file (default {DEFAULT_CONFIG_PATH})")

    run = subparsers.add_parser("run", help="run the sealfleet daemon (systemd Type=notify)")
    config_arg(run)
    run.set_defaults(handler=_run)

    status = subparsers.add_parser("status", help="show the fleet staleness report as a table")
    config_arg(status)
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(handler=_status)

    staleness = subparsers.add_parser(
        "staleness", help="report staleness; exit 1 when --fail-on findings are present")
    config_arg(staleness)
    staleness.add_argument("--fail-on", action="append", default=[], metavar="FINDING",
                           help=f"exit 1 when found: {', '.join(FINDINGS)} "
                                "(repeat or comma-separate)")
    staleness.add_argument("-o", "--output", choices=("table", "json"), default="table")
    staleness.set_defaults(handler=_staleness)

    demo = subparsers.add_parser(
        "demo", help="start an emulated fleet plus the daemon and show the status page")
    demo.add_argument("--once", action="store_true",
                      help="print the report after the first scan and exit")
    demo.add_argument("--clusters", type=int, default=3, help="emulated clusters (default 3)")
    demo.add_argument("--state-dir", type=Path, default=None,
                      help="where the sandbox writes its files (default: a temp dir)")
    demo.add_argument("-o", "--output", choices=("table", "json"), default="table",
                      help="how to print the report (json: addresses go to stderr)")
    demo.set_defaults(handler=_demo)


# ----------------------------------------------------------------------- run


class EarlySignals:
    """SIGTERM, SIGINT and SIGHUP from the first moment of ``sealfleet run``.

    Python's default action for SIGHUP and SIGTERM is to die, and the service's own
    handlers only exist once its event loop runs, after ~0.5 s of imports and config
    work: a reload (SIGHUP) sent right after start killed the daemon with status 129.
    These process-level handlers remember what arrived until :meth:`deliver_to` names
    the service's ``request_stop``/``request_reload`` (which only set its events), then
    forward to them; the service's loop handlers take over while it runs and put these
    back when it returns.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self._pending: list[int] = []
        self._stop: Callable[[], None] | None = None
        self._reload: Callable[[], None] | None = None

    def install(self) -> EarlySignals:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def deliver_to(self, *, stop: Callable[[], None], reload: Callable[[], None]) -> None:
        self._stop, self._reload = stop, reload
        pending, self._pending = self._pending, []
        for signum in pending:
            self._dispatch(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._stop is None:
            self._pending.append(signum)
        else:
            self._dispatch(signum)

    def _dispatch(self, signum: int) -> None:
        target = self._reload if signum == signal.SIGHUP else self._stop
        if target is not None:
            target()


def _run(args: argparse.Namespace) -> int:
    signals = EarlySignals().install()  # before anything slow: imports, config, logging
    import asyncio

    from sealfleet.app import service
    from sealfleet.app.config import load_settings
    from sealfleet.app.logging import configure_logging

    settings = load_settings(args.config)
    configure_logging(level=settings.logging.level, fmt=settings.logging.format)
    _raise_open_files_limit()
    # The GIL changes hands every 1 ms instead of 5: the API answers on its own thread
    # (adapters/http_api/http_thread), and each time it wakes it waits for the GIL once
    # or twice, behind the main loop or the report's composition, each up to the switch
    # interval.  At 1,000 clusters the staleness p99 during a first pass went from 18.5
    # to 13.1 ms (0.5 ms gained nothing more: what is left is waiting for a core).
    sys.setswitchinterval(0.001)
    daemon = service.Service(settings, hard_exit=True)
    signals.deliver_to(stop=daemon.request_stop, reload=daemon.request_reload)
    try:
        asyncio.run(daemon.run())
    except BaseExceptionGroup as group:
        raise errors.first_error(group) from None
    return 0


def _raise_open_files_limit() -> None:
    """Soft limit of open files up to the hard one: a cluster takes two or three sockets
    for as long as the daemon runs, and systemd's default soft limit (1024, kept low for
    programs that use select()) would end a fleet at some 300 clusters.  asyncio polls
    with epoll, which has no such limit; systemd's default hard limit is 524288."""
    import resource

    import structlog

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited or (hard != unlimited and soft >= hard):
        return
    wanted = hard if hard != unlimited else max(soft, 1 << 20)  # Linux's nr_open
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:  # a container may refuse; the soft one stays
        structlog.get_logger(__name__).warning("open_files_limit_kept", soft=soft,
                                               hard=hard, error=str(exc))
        return
    structlog.get_logger(__name__).debug("open_files_limit_raised", soft=soft, to=wanted)


# ----------------------------------------------------------------------- clients


def _client(settings: Settings, *, admin: bool = False) -> Any:
    """The daemon's API: the socket when there is one, else TCP with the read token (the
    admin token when *admin*: mutations)."""
    from sealfleet.adapters.http_api.client import ApiClient
    from sealfleet.app import preflight

    socket_path = settings.api.socket
    address = settings.api.listen_address
    base_url = None
    token = None
    if address is not None:
        host, port = address
        base_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        if socket_path is None or not socket_path.exists():
            # The daemon's own reader: the same owner-only rule, the same messages.
            raw = preflight.read_token_of(settings,
                                          "admin_token_file" if admin else "read_token_file")
            token = raw.decode("ascii") if raw is not None else None
    return ApiClient(socket_path=socket_path, base_url=base_url, token=token)


def fetch_report(settings: Settings) -> dict[str, Any]:
    import asyncio

    report: dict[str, Any] = asyncio.run(_client(settings).get_json("/api/v1/staleness"))
    return report


def _settings(args: argparse.Namespace) -> Settings:
    from sealfleet.app.config import load_settings

    return load_settings(args.config)


def _fail_on(values: list[str]) -> set[str]:
    wanted = {v.strip() for value in values for v in value.split(",") if v.strip()}
    unknown = sorted(wanted - set(FINDINGS))
    if unknown:
        raise InputError(f"--fail-on: unknown finding {unknown[0]!r}; "
                         f"choose from {', '.join(FINDINGS)}")
    return wanted


def _status(args: argparse.Namespace) -> int:
    report = fetch_report(_settings(args))
    _print_report(report, args.output)
    return 0


def _staleness(args: argparse.Namespace) -> int:
    from sealfleet.domain.staleness import findings

    fail_on = _fail_on(args.fail_on)
    report = fetch_report(_settings(args))
    _print_report(report, args.output)
    found = findings(report) & fail_on
    if found:
        print(f"sealfleet: found {', '.join(sorted(found))}", file=sys.stderr)
        return 1
    return 0


def _print_report(report: dict[str, Any], output: str) -> None:
    import json

    if output == "json":
        print(json.dumps(report, indent=2))
    else:
        render_table(report)


def _days(seconds: int | None) -> str:
    return "-" if seconds is None else f"{seconds / 86400:.1f}d"


def render_table(report: dict[str, Any], *, file: Any = None) -> None:
    """The staleness report as a rich table (colour only on a terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, highlight=False)
    if not console.is_terminal:  # piped or captured: no wrapping into a narrow default
        console = Console(file=file or sys.stdout, highlight=False, width=160)
    period = report["policy"]["key_renew_period_seconds"]
    table = Table(title=f"sealfleet staleness (key renew period {_days(period)})",
                  title_justify="left")
    for column in ("cluster", "reachable", "sealing key", "age", "key", "drift", "total",
                   *_STATES):
        table.add_column(column, justify="right" if column in ("age", "total", *_STATES)
                         else "left", no_wrap=column == "cluster")
    for cluster in report["clusters"]:
        sealing = cluster.get("sealing_key") or {}
        reachable = cluster["reachable"]
        reach = ("[green]yes[/]" if reachable else "[red]no[/]" if reachable is False
                 else "[yellow]not yet[/]")
        stale = sealing.get("stale")
        key_state = ("[red]stale[/]" if stale else "[green]ok[/]" if stale is False else "-")
        drift = cluster.get("drift")
        drift_text = "[red]drift[/]" if drift else "[green]in sync[/]" if drift is False else "-"
        counts = cluster["sealed_secrets"]

        def cell(state: str, colour: str, counts: dict[str, int] = counts) -> str:
            n = counts[state]
            return f"[{colour}]{n}[/]" if n else "0"

        fingerprint = sealing.get("fingerprint") or "-"
        table.add_row(
            cluster["name"], reach, fingerprint[:15] + ("…" if len(fingerprint) > 15 else ""),
            _days(sealing.get("age_seconds")), key_state, drift_text, str(counts["total"]),
            cell("current", "green"), cell("stale", "yellow"), cell("compromised", "red"),
            cell("unknown", "magenta"), cell("failing", "red"))
    console.print(table)
    fleet = report["fleet"]
    totals = fleet["sealed_secrets"]
    console.print(f"{fleet['reachable']}/{fleet['clusters']} clusters reachable; "
                  f"{totals['total']} SealedSecrets: "
                  + ", ".join(f"{totals[s]} {s}" for s in _STATES)
                  + f" (report {report['generated_at']})")
    for line in fleet_view_lines(report):
        console.print(line, markup=False, highlight=False)
    errors = [(c["name"], c["last_error"]) for c in report["clusters"] if c.get("last_error")]
    for name, error in errors:
        console.print(f"[red]{name}[/]: {error}", markup=True, highlight=False)


def fleet_view_lines(report: dict[str, Any]) -> list[str]:
    """The fleet view as plain lines: master key, clusters in sync and drifting (why),
    controllers not serving, jobs running."""
    fleet = report["fleet"]
    lines = []
    master = fleet.get("master_key")
    if master:
        lines.append(f"master key {master['fingerprint']} (since {master['not_before']}); "
                     f"{fleet.get('in_sync', 0)} clusters in sync, "
                     f"{fleet.get('drifting', 0)} drifting")
    for cluster in report["clusters"]:
        reasons = cluster.get("drift_reasons") or []
        if reasons:
            why = ", ".join(r["reason"] + (f" {r['fingerprint']}" if r.get("fingerprint")
                                           else "") for r in reasons)
            lines.append(f"  {cluster['name']} drifts: {why}")
        state = cluster.get("controller_state")
        if state not in (None, "serving"):
            lines.append(f"  {cluster['name']} controller {state}: "
                         f"{cluster.get('controller_error') or ''}".rstrip(": "))
    for job in fleet.get("jobs_running") or []:
        lines.append(f"job {job['id']} {job['kind']} {job['state']} (by {job['actor']})")
    return lines


# ----------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    if not 1 <= args.clusters <= 20:
        raise InputError("--clusters must be from 1 to 20")
    import asyncio
    import contextlib
    import tempfile

    from sealfleet.app.logging import configure_logging

    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    with contextlib.ExitStack() as stack:
        state_dir = args.state_dir
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="sealfleet-demo-")))
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            return asyncio.run(_demo_async(state_dir, args.clusters, once=args.once,
                                           output=args.output))
        except BaseExceptionGroup as group:
            raise errors.first_error(group) from None


async def _demo_async(state_dir: Path, clusters: int, *, once: bool, output: str) -> int:
    import asyncio
    import contextlib

    # Imported here, not at the top: only the demo needs the sandbox, never the daemon
    # (the layer contract allows this one import from app/cli/daemon.py).
    import sealfleet.sandbox as sandbox_module
    from sealfleet.app import service
    from sealfleet.app.config import load_settings
    from sealfleet.app.repos import RepoScanner

    # Two keys per cluster (NotBefore 35 and 5 days ago): SealedSecrets sealed with the
    # older one are stale.  2048-bit keys keep the demo's start-up quick.  A third of
    # them are applied by Flux from the sandbox's GitOps repository (a [[repos]] entry).
    seed = sandbox_module.SeedSpec(namespaces=3, sealed_secrets=20, keys=2, key_bits=2048,
                                   gitops_fraction=0.3)
    info = sys.stderr if output == "json" else sys.stdout
    print(f"Starting {clusters} emulated clusters in {state_dir} ...", file=info, flush=True)
    async with sandbox_module.Sandbox(state_dir, clusters=clusters, seed=seed) as sandbox:
        settings = load_settings(Path(sandbox.config))
        if settings.api.listen is None:
            # The status page needs a browser-reachable address: loopback, with a token.
            settings = settings.model_copy(update={"api": settings.api.model_copy(
                update={"listen": "127.0.0.1:0"})})
        daemon = service.Service(settings, install_signal_handlers=not once)
        task = asyncio.create_task(daemon.run(), name="demo:daemon")
        try:
            ready = asyncio.create_task(daemon.ready.wait())
            done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                ready.cancel()
                await task  # raises what stopped the daemon
                return 1
            if daemon.api is not None:
                for address in daemon.api.addresses:
                    if address.startswith("http"):
                        print(f"Status page: {address}  (in a browser: any user name, "
                              f"the password is in {settings.api.read_token_file})\n"
                              f"  curl -H \"Authorization: Bearer "
                              f"$(cat {settings.api.read_token_file})\" {address}",
                              file=info)
                    else:
                        print(f"API socket:  {address}\n  curl --unix-socket "
                              f"{address.removeprefix('unix:')} http://sealfleet/"
                              "api/v1/staleness", file=info)
            view = daemon.view
            scanner = getattr(daemon.fleet, "repos", None)
            if isinstance(scanner, RepoScanner):
                # The report should show the GitOps repository scanned, not pending.  The
                # scanner counts passes (no event to wait on), so the demo polls it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        while any(scan.passes == 0  # noqa: ASYNC110
                                  for scan in scanner.scans.values()):
                            await asyncio.sleep(0.05)
            if view is not None:
                _print_report((await view.rebuild()).report, output)
            if once:
                return 0
            print("Running; press Ctrl-C to stop.", file=info, flush=True)
            await daemon.stop_requested.wait()
            return 0
        finally:
            daemon.request_stop()
            with contextlib.suppress(asyncio.CancelledError):
                await task
