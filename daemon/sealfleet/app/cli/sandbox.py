"""``sealfleet sandbox``: emulated clusters with a sealed-secrets controller, in the foreground.

Runs until SIGINT or SIGTERM.  ``DIR/ready`` appears once every cluster serves and is
removed on exit; ``DIR/kubeconfig`` (contexts ``sandbox-1`` ...) works with kubectl and
kubeseal, ``DIR/sealfleet.toml`` with ``sealfleet run -c``; ``DIR/control`` names the
control socket (every cluster's faults at once, connection and request counters: see
``sandbox.control``).  The sandbox package is imported inside the handler only, so no
other command (and never the daemon) loads it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import signal
import sys
from pathlib import Path

from sealfleet.errors import InputError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sandbox", help="run emulated clusters with a sealed-secrets controller",
        description="Run N emulated kube-apiservers on 127.0.0.1, each with an emulated "
                    "sealed-secrets controller, seeded with SealedSecrets, until SIGINT or "
                    "SIGTERM. Point kubectl at DIR/kubeconfig.")
    parser.add_argument("--clusters", type=int, default=1, metavar="N",
                        help="number of clusters (default 1)")
    parser.add_argument("--state-dir", required=True, metavar="DIR",
                        help="where kubeconfig, sealfleet.toml, seed.json and ready go")
    parser.add_argument("--namespaces", type=int, default=3, metavar="K",
                        help="namespaces per cluster for seeded SealedSecrets (default 3)")
    parser.add_argument("--sealed-secrets", type=int, default=20, metavar="M",
                        help="SealedSecrets seeded per cluster (default 20; 0 for none)")
    parser.add_argument("--keys", type=int, default=2, metavar="R",
                        help="sealing keys per cluster, NotBefore 5, 35, 65 ... days ago "
                             "(default 2)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed for names, scopes, plaintexts and key choice (default 0)")
    parser.add_argument("--shared-key", action="store_true",
                        help="the newest key is one identical key in every cluster")
    parser.add_argument("--key-renew-period", default="720h", metavar="D",
                        help="controllers' --key-renew-period, Go syntax (720h, 90s) or "
                             "days (30d); 0 disables renewal (default 720h)")
    parser.add_argument("--key-bits", type=int, default=4096, choices=(2048, 3072, 4096),
                        help="RSA size of seeded and controller-generated keys (default 4096)")
    parser.add_argument("--malformed", type=int, default=0, metavar="COUNT",
                        help="per cluster, extra SealedSecrets no key can unseal (default 0)")
    parser.add_argument("--watch-for-secrets", action="store_true",
                        help="start the controllers with --watch-for-secrets")
    parser.add_argument("--controller-startup-delay", type=float, default=2.5, metavar="SECONDS",
                        help="seconds from a new controller Pod to its process starting, as a "
                             "node takes; meanwhile an old Pod keeps serving (default 2.5; "
                             "0 for instant restarts)")
    parser.add_argument("--gitops", nargs="?", type=float, const=0.3, default=0.0,
                        metavar="FRACTION",
                        help="a GitOps repository (DIR/gitops: bare remote.git and its clone, "
                             "a [[repos]] entry in sealfleet.toml) holding FRACTION of each "
                             "cluster's SealedSecrets (default 0.3 when given), applied by an "
                             "emulated Flux per cluster")
    parser.add_argument("--flux-interval", default="10m", metavar="D",
                        help="the Kustomization's spec.interval (drift correction), Go "
                             "syntax (default 10m)")
    parser.add_argument("--flux-source-interval", default="1m", metavar="D",
                        help="the GitRepository's spec.interval (how often the remote is "
                             "fetched), Go syntax (default 1m)")
    parser.set_defaults(handler=run_sandbox)


def _renew_period(text: str) -> dt.timedelta:
    from sealfleet.sandbox.controller.flags import FlagError, parse_go_duration

    if text.endswith("d") and text[:-1].isdigit():
        return dt.timedelta(days=int(text[:-1]))
    try:
        return parse_go_duration(text)
    except FlagError:
        raise InputError(f"--key-renew-period: invalid duration {text!r}") from None


def _interval(flag: str, text: str) -> float:
    from sealfleet.sandbox.controller.flags import FlagError, parse_go_duration

    try:
        seconds = parse_go_duration(text).total_seconds()
    except FlagError:
        raise InputError(f"--{flag}: invalid duration {text!r}") from None
    if seconds <= 0:
        raise InputError(f"--{flag} must be more than 0")
    return seconds


def run_sandbox(args: argparse.Namespace) -> int:
    from sealfleet.sandbox import Sandbox, SeedSpec
    from sealfleet.sandbox.control import ControlServer
    from sealfleet.sandbox.controller import ControllerFlags

    for flag in ("clusters", "keys"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be at least 1")
    if not 0 <= args.controller_startup_delay <= 3600:
        raise InputError("--controller-startup-delay must be between 0 and 3600 seconds")
    for flag in ("namespaces", "sealed_secrets", "malformed"):
        if getattr(args, flag) < 0 or (flag == "namespaces" and args.namespaces < 1):
            raise InputError(f"--{flag.replace('_', '-')} is out of range")
    if not 0 <= args.gitops <= 1:
        raise InputError("--gitops: FRACTION must be between 0 and 1")
    flux_interval = _interval("flux-interval", args.flux_interval)
    flux_source_interval = _interval("flux-source-interval", args.flux_source_interval)
    flags = ControllerFlags(key_renew_period=_renew_period(args.key_renew_period),
                            key_size=args.key_bits, watch_for_secrets=args.watch_for_secrets)
    spec = SeedSpec(namespaces=args.namespaces, sealed_secrets=args.sealed_secrets,
                    keys=args.keys, seed=args.seed, shared_key=args.shared_key,
                    key_bits=args.key_bits, malformed=args.malformed,
                    gitops_fraction=args.gitops)
    state_dir = Path(args.state_dir)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        sandbox = Sandbox(state_dir, clusters=args.clusters, seed=spec, flags=flags,
                          startup_delay=args.controller_startup_delay,
                          flux_interval=flux_interval,
                          flux_source_interval=flux_source_interval)
        # The control socket first: it is there by the time DIR/ready is.
        async with ControlServer(sandbox, state_dir), sandbox:
            # What seeding made lives as long as the sandbox (the objects, their
            # indexes, the keys): out of the collector's sight, as the daemon's heap is
            # (app/heap.py).  Each full collection walked all of it again: a bench/fleet.py
            # run at 300 clusters made 4 of them, 0.8 s of CPU; 0.4 s with this.
            gc.freeze()
            stats = sandbox.stats()
            print(f"sandbox ready: {len(sandbox.clusters)} cluster(s) in "
                  f"{sandbox.timings['start_seconds']:.1f}s, {stats['rss_mb']:.0f} MB resident; "
                  f"export KUBECONFIG={sandbox.kubeconfig}", file=sys.stderr, flush=True)
            await stop.wait()

    from sealfleet.app.logging import configure_logging

    configure_logging(level="info", stream=sys.stderr)
    asyncio.run(serve())
    return 0
