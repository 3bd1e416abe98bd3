"""``GET /``: the fleet at a glance, one card per cluster (no JS, no build step).

Rendered from the same report as ``/api/v1/staleness`` whenever the snapshot is rebuilt.
Each card links to its cluster's page (``/clusters/{name}``), each count to that page
filtered by the state; the header links to the keys and jobs pages.  Every value that
comes from a cluster (names, errors, fingerprints, Secret names) is escaped.
"""

from __future__ import annotations

from typing import Any

from sealfleet.adapters.http_api.pages import layout
from sealfleet.adapters.http_api.pages.layout import badge, esc
from sealfleet.domain import controller_state
from sealfleet.domain.staleness import SHOWN_STATES

_STATES = tuple(state.value for state in SHOWN_STATES)
ROOT = ""   # the overview is "/": every other page is relative to it


def reachability_badge(cluster: dict[str, Any]) -> str:
    if cluster["reachable"] is None:
        return badge("not scanned yet", "warn")
    return badge("reachable", "ok") if cluster["reachable"] else badge("unreachable", "bad")


def problems(cluster: dict[str, Any]) -> str:
    """The scan error, the controller's problem and the non-keys, as warning lines."""
    parts = []
    if cluster.get("last_error"):
        parts.append(f'<p class="error">{esc(cluster["last_error"])}</p>')
    state = cluster.get("controller_state")
    if cluster.get("controller_error") or controller_state.is_problem(state):
        shown = esc(str(state).replace("_", " ")) if state else "problem"
        parts.append(f'<p class="error"><b>Controller {shown}:</b> '
                     f'{esc(cluster.get("controller_error") or "")}</p>')
    malformed = cluster.get("malformed_key_secrets") or []
    if malformed:
        rows = "".join(f"<li><code>{esc(m['secret'])}</code>: {esc(m['reason'])}</li>"
                       for m in malformed)
        parts.append(f'<div class="error"><b>{layout.plural(len(malformed), "Secret")} '
                     f"that look{'s' if len(malformed) == 1 else ''} like a key Secret "
                     f"but {'is' if len(malformed) == 1 else 'are'} not a key</b> (never "
                     f"used as one):<ul>{rows}</ul></div>")
    return "".join(parts)


def sealing_key_summary(cluster: dict[str, Any], period: int, root: str) -> str:
    sealing = cluster.get("sealing_key")
    if sealing and sealing.get("age_seconds") is not None:
        age = sealing["age_seconds"]
        ratio = min(1.0, age / period) if period else 1.0
        colour = "bad" if sealing["stale"] else ("warn" if ratio > 0.75 else "ok")
        reasons = ", ".join(esc(r.replace("_", " ")) for r in sealing.get("reasons", []))
        stale = f" <b>(stale: {reasons})</b>" if sealing["stale"] else ""
        return (f"<div>Sealing key age <b>{layout.days(age)}</b> of "
                f"{layout.days(period)}{stale}</div>"
                f'<div class="bar" title="{layout.days(age)} / {layout.days(period)}">'
                f'<span class="{colour}" style="width:{ratio * 100:.1f}%"></span></div>'
                f'<div class="muted">{layout.key_link(sealing["fingerprint"], root)} '
                f'(expires {esc(sealing["not_after"])})</div>')
    if sealing:
        return (f'<div>Sealing key {layout.key_link(sealing["fingerprint"], root)} '
                "(certificate not known)</div>")
    return '<div class="muted">Sealing key unknown</div>'


def drift_summary(cluster: dict[str, Any]) -> str:
    drift = cluster.get("drift")
    if drift is True:
        reasons = "".join(f"<li>{esc(r['reason'].replace('_', ' '))}"
                          + (f" {layout.key_link(r['fingerprint'], ROOT)}"
                             if r.get("fingerprint") else "")
                          + (f' <span class="muted">{esc(r["detail"])}</span>'
                             if r.get("detail") else "") + "</li>"
                          for r in cluster.get("drift_reasons") or [])
        return (f'<div>{badge("drift", "bad")} keys differ from the fleet master set'
                f'{f"<ul>{reasons}</ul>" if reasons else ""}</div>')
    if drift is False:
        return f'<div>{badge("in sync", "ok")} with the fleet master set</div>'
    return ""


def _card(cluster: dict[str, Any], period: int) -> str:
    name = cluster["name"]
    href = layout.cluster_href(name, ROOT)
    parts = [f'<section><h2><a href="{esc(href)}">{esc(name)}</a> '
             f"{reachability_badge(cluster)}</h2>", problems(cluster),
             sealing_key_summary(cluster, period, ROOT), drift_summary(cluster)]
    counts = cluster["sealed_secrets"]
    rows = []
    for state in _STATES:
        n = int(counts[state])
        label = (f'<a href="{esc(layout.cluster_href(name, ROOT, state=state))}">{state}</a>'
                 if n else state)
        rows.append(f'<tr><td>{label}</td><td class="n">{n}</td></tr>')
    parts.append(f'<table><tr><th><a href="{esc(href)}">SealedSecrets</a></th>'
                 f'<th class="n">{int(counts["total"])}</th></tr>{"".join(rows)}</table>')
    parts.append(f'<div class="muted">{layout.plural(len(cluster.get("keys", [])), "key")} '
                 'held; last scan '
                 f'{esc(cluster.get("last_scan_at") or "never")}</div></section>')
    return "".join(parts)


def render(report: dict[str, Any]) -> bytes:
    period = int(report["policy"]["key_renew_period_seconds"])
    fleet = report["fleet"]
    totals = fleet["sealed_secrets"]
    summary = (f'{fleet["clusters"]} clusters, {fleet["reachable"]} reachable, '
               f'{fleet.get("stale_sealing_keys", 0)} with a stale sealing key, '
               f'{fleet.get("drifting", 0)} drifting; {totals["total"]} SealedSecrets: '
               + ", ".join(f"{totals[s]} {s}" for s in _STATES))
    cards = "".join(_card(c, period) for c in report["clusters"]) or \
        '<section class="muted">No clusters configured.</section>'
    master = fleet.get("master_key")
    fleet_view = (f'Master key {layout.key_link(master["fingerprint"], ROOT)}: '
                  f'{fleet.get("in_sync", 0)} in sync, {fleet.get("drifting", 0)} drifting'
                  if master else "No fleet master key.")
    running = fleet.get("jobs_running") or []
    if running:
        fleet_view += " " + ", ".join(
            f'<a href="jobs">{esc(j["kind"])} {esc(j["state"])}</a>' for j in running)
    return layout.page(
        title=f"sealfleet: {fleet['clusters']} clusters", root=ROOT, here="overview",
        body=cards, refresh=30, main_class="cards",
        summary=(esc(summary), fleet_view,
                 f"Report generated {esc(report['generated_at'])}; key renew period "
                 f"{layout.days(period)}."))
