"""``GET /``: the fleet at a glance, as one self-contained HTML page (no JS, no build step).

Rendered from the same report as ``/api/v1/staleness`` whenever the snapshot is rebuilt.
Every value that comes from a cluster (names, errors, fingerprints) is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

from sealfleet.domain.staleness import SHOWN_STATES

_CSS = """
:root { --ok:#2e7d32; --warn:#ef6c00; --bad:#c62828; --muted:#6b7280; --bg:#f8fafc; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; background: var(--bg); color: #111827; }
header { padding: 16px 24px; background: #111827; color: #f9fafb; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: #d1d5db; }
main { padding: 16px 24px; display: grid; gap: 16px;
       grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 14px 16px; }
h2 { margin: 0 0 8px; font-size: 16px; display: flex; justify-content: space-between; }
.badge { font-size: 12px; padding: 1px 8px; border-radius: 10px; color: #fff; }
.ok { background: var(--ok); } .warn { background: var(--warn); } .bad { background: var(--bad); }
.muted { color: var(--muted); } code { font-size: 12px; word-break: break-all; }
.bar { height: 10px; border-radius: 5px; background: #e5e7eb; overflow: hidden; margin: 4px 0; }
.bar > span { display: block; height: 100%; }
table { border-collapse: collapse; width: 100%; margin-top: 8px; }
td, th { text-align: left; padding: 2px 6px 2px 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.error { color: var(--bad); word-break: break-word; }
"""

_STATES = tuple(state.value for state in SHOWN_STATES)


def _days(seconds: float) -> str:
    return f"{seconds / 86400:.1f} d"


def _cluster(cluster: dict[str, Any], period: int) -> str:
    name = escape(cluster["name"])
    if cluster["reachable"] is None:
        badge = '<span class="badge warn">not scanned yet</span>'
    elif cluster["reachable"]:
        badge = '<span class="badge ok">reachable</span>'
    else:
        badge = '<span class="badge bad">unreachable</span>'
    parts = [f"<section><h2>{name} {badge}</h2>"]
    if cluster.get("last_error"):
        parts.append(f'<p class="error">{escape(str(cluster["last_error"]))}</p>')
    sealing = cluster.get("sealing_key")
    if sealing and sealing.get("age_seconds") is not None:
        age = sealing["age_seconds"]
        ratio = min(1.0, age / period) if period else 1.0
        colour = "bad" if sealing["stale"] else ("warn" if ratio > 0.75 else "ok")
        reasons = ", ".join(escape(r.replace("_", " ")) for r in sealing.get("reasons", []))
        parts.append(
            f'<div>Sealing key age <b>{_days(age)}</b> of {_days(period)} '
            f'{"<b>(stale: " + reasons + ")</b>" if sealing["stale"] else ""}</div>'
            f'<div class="bar" title="{_days(age)} / {_days(period)}">'
            f'<span class="{colour}" style="width:{ratio * 100:.1f}%"></span></div>'
            f'<div class="muted"><code>{escape(sealing["fingerprint"])}</code> '
            f'(expires {escape(str(sealing["not_after"]))})</div>')
    elif sealing:
        parts.append(f'<div>Sealing key <code>{escape(sealing["fingerprint"])}</code> '
                     '(certificate not known)</div>')
    else:
        parts.append('<div class="muted">Sealing key unknown</div>')
    drift = cluster.get("drift")
    if drift is True:
        parts.append('<div><span class="badge bad">drift</span> keys differ from the fleet '
                     'master set</div>')
    elif drift is False:
        parts.append('<div><span class="badge ok">in sync</span> with the fleet master set</div>')
    counts = cluster["sealed_secrets"]
    rows = "".join(f'<tr><td>{state}</td><td class="n">{int(counts[state])}</td></tr>'
                   for state in _STATES)
    parts.append(f'<table><tr><th>SealedSecrets</th><th class="n">{int(counts["total"])}'
                 f"</th></tr>{rows}</table>")
    parts.append(f'<div class="muted">{len(cluster.get("keys", []))} keys held; last scan '
                 f'{escape(str(cluster.get("last_scan_at") or "never"))}</div></section>')
    return "".join(parts)


def render(report: dict[str, Any]) -> bytes:
    period = int(report["policy"]["key_renew_period_seconds"])
    fleet = report["fleet"]
    totals = fleet["sealed_secrets"]
    summary = (f'{fleet["clusters"]} clusters, {fleet["reachable"]} reachable; '
               f'{totals["total"]} SealedSecrets: '
               + ", ".join(f"{totals[s]} {s}" for s in _STATES))
    clusters = "".join(_cluster(c, period) for c in report["clusters"]) or \
        '<section class="muted">No clusters configured.</section>'
    page = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"refresh\" content=\"30\">"
        f"<title>sealfleet: {fleet['clusters']} clusters</title><style>{_CSS}</style></head>"
        f"<body><header><h1>sealfleet</h1><p>{escape(summary)}</p>"
        f"<p>Report generated {escape(str(report['generated_at']))}; key renew period "
        f"{_days(period)}.</p></header><main>{clusters}</main></body></html>")
    return page.encode()
