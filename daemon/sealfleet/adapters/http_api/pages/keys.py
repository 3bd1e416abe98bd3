"""``GET /keys``: every key the fleet knows, newest first, from the cached snapshot.

Per key: fingerprint, NotBefore and age, NotAfter, state, where it came from, whether
it is in the fleet master set, where it is held (which clusters, and whether sealfleet's
store holds its private key), how much of the inventory it sealed, and whether it is
still needed: a key that any inventoried SealedSecret is still sealed with, or that a
cluster seals with now, cannot be thrown away.  Public facts only: never a certificate,
never a private key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sealfleet.adapters.http_api.pages import layout
from sealfleet.adapters.http_api.pages.layout import badge, esc

ROOT = ""
_STATE_TONE = {"active": "ok", "retired": "none", "compromised": "bad"}


def _roles(report: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """fingerprint -> {"sealing": [cluster...], "active": [...]} from the report."""
    roles: dict[str, dict[str, list[str]]] = {}
    for cluster in report["clusters"]:
        for held in cluster.get("keys", []):
            entry = roles.setdefault(held["fingerprint"], {"sealing": [], "active": []})
            if held["sealing"]:
                entry["sealing"].append(cluster["name"])
            elif held["active"]:
                entry["active"].append(cluster["name"])
        sealing = (cluster.get("sealing_key") or {}).get("fingerprint")
        if sealing is not None:
            entry = roles.setdefault(sealing, {"sealing": [], "active": []})
            if cluster["name"] not in entry["sealing"]:
                entry["sealing"].append(cluster["name"])
    return roles


def _held(key: dict[str, Any], roles: dict[str, list[str]]) -> str:
    places = []
    for cluster in sorted(set(key["clusters"]) | set(roles["sealing"])):
        role = (" (sealing)" if cluster in roles["sealing"]
                else "" if cluster in roles["active"] else " (not loaded)")
        places.append(f'<a href="{esc(layout.cluster_href(cluster, ROOT))}">{esc(cluster)}</a>'
                      f'<span class="muted">{role}</span>')
    if key["has_private_key"]:
        places.append("sealfleet store <span class=\"muted\">(private key)</span>")
    return "<br>".join(places) or '<span class="muted">nowhere now</span>'


def _needed(key: dict[str, Any], roles: dict[str, list[str]]) -> str:
    reasons = []
    if key["sealed_secrets"]:
        n = key["sealed_secrets"]
        reasons.append(f"{n} SealedSecret{'s' if n != 1 else ''} still sealed with it")
    if roles["sealing"]:
        reasons.append("sealing key of " + ", ".join(esc(c) for c in roles["sealing"]))
    if reasons:
        return f'{badge("needed", "warn" if key["state"] != "active" else "ok")} ' \
               f'<div class="muted">{"; ".join(reasons)}</div>'
    return f'{badge("not needed", "none")} <div class="muted">nothing inventoried uses it</div>'


def _row(key: dict[str, Any], roles: dict[str, list[str]], now: dt.datetime,
         period: int) -> str:
    fingerprint = key["fingerprint"]
    not_before = layout.parse_time(key["not_before"])
    age = (now - not_before).total_seconds() if not_before else None
    age_text = ""
    if age is not None:
        old = ' class="error"' if age > period else ""
        age_text = f"<div{old}>age {layout.days(max(0.0, age))}</div>"
    state = key["state"]
    master = badge("master", "ok") if key["fleet_master"] else '<span class="muted">no</span>'
    return (f'<tr id="{esc(layout.key_anchor(fingerprint))}">'
            f"<td><code>{esc(fingerprint)}</code></td>"
            f"<td>{layout.when(key['not_before'], now)}{age_text}</td>"
            f"<td>{layout.when(key['not_after'], now)}</td>"
            f"<td>{badge(state, _STATE_TONE.get(state, 'none'))}</td>"
            f"<td>{esc(key['source'])}</td><td>{master}</td><td>{_held(key, roles)}</td>"
            f'<td class="n">{int(key["items"])}</td>'
            f'<td class="n">{int(key["sealed_secrets"])}</td>'
            f"<td>{_needed(key, roles)}</td></tr>")


def render(report: dict[str, Any], keys: Sequence[dict[str, Any]]) -> bytes:
    now = layout.parse_time(report["generated_at"]) or dt.datetime.now(dt.UTC)
    period = int(report["policy"]["key_renew_period_seconds"])
    roles = _roles(report)
    empty: dict[str, list[str]] = {"sealing": [], "active": []}
    ordered = sorted(keys, key=lambda k: (k["not_before"], k["fingerprint"]), reverse=True)
    rows = "".join(_row(k, roles.get(k["fingerprint"], empty), now, period) for k in ordered)
    if rows:
        body = ('<section><table class="list"><tr><th>Fingerprint</th><th>NotBefore</th>'
                '<th>NotAfter</th><th>State</th><th>Source</th><th>Fleet master</th>'
                '<th>Held by</th><th class="n">Items</th><th class="n">SealedSecrets</th>'
                f"<th>Needed</th></tr>{rows}</table></section>")
    else:
        body = '<section class="muted">No keys known yet.</section>'
    private = sum(1 for k in keys if k["has_private_key"])
    needed = sum(1 for k in keys
                 if k["sealed_secrets"] or roles.get(k["fingerprint"], empty)["sealing"])
    return layout.page(
        title="sealfleet: keys", root=ROOT, here="keys", body=body, refresh=60,
        summary=(f"{len(keys)} keys known, {private} with the private key in sealfleet's "
                 f"store, {needed} still needed; key renew period {layout.days(period)}",
                 f"Report generated {esc(report['generated_at'])}"))
