"""``GET /clusters/{name}``: one cluster, its keys, and its SealedSecrets by state.

The cluster's facts come from the cached snapshot; the SealedSecrets are one keyset page
of the store's cursor query (``?state=`` filters, ``?cursor=`` pages on, ``?limit=``
sizes the page), so a cluster of 100k SealedSecrets costs one bounded, indexed read per
view.  Each row lists the SealedSecret's items grouped by the key that sealed them, with
that key's short fingerprint and what it means here (the sealing key, an older key, a
compromised key, or no known key).  No ciphertext, no value, no key material is shown.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sealfleet.adapters.http_api import status_page
from sealfleet.adapters.http_api.pages import layout
from sealfleet.adapters.http_api.pages.layout import badge, esc
from sealfleet.adapters.store.records import SealedSecretRecord
from sealfleet.domain.staleness import SHOWN_STATES, SecretState, iso
from sealfleet.errors import InputError

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
QUERY_NAMES = frozenset({"state", "cursor", "limit"})
ROOT = "../"
_LIMIT = re.compile(r"[0-9]{1,3}")   # ASCII digits only, as the JSON API's limit
_STATE_TONE = {"current": "ok", "stale": "warn", "compromised": "bad", "unknown": "none",
               "failing": "bad"}


@dataclass(frozen=True)
class PageQuery:
    """What one view of the page asks the store for."""

    state: SecretState | None = None
    cursor: str | None = None
    limit: int = PAGE_SIZE

    def link(self, cluster: str, **changes: str | None) -> str:
        """This view's URL with *changes* applied (None drops a parameter)."""
        params: dict[str, str | None] = {
            "state": self.state.value if self.state else None, "cursor": self.cursor,
            "limit": str(self.limit) if self.limit != PAGE_SIZE else None, **changes}
        return layout.cluster_href(cluster, ROOT,
                                   **{k: v for k, v in params.items() if v is not None})


def parse_query(query: Mapping[str, str]) -> PageQuery:
    """The page's parameters (the guard has already refused unknown or repeated ones)."""
    for name in QUERY_NAMES:
        if name in query and not query[name]:
            raise InputError(f"{name} must not be empty")
    state = None
    if "state" in query:
        try:
            state = SecretState(query["state"])
        except ValueError:
            raise InputError("state must be one of "
                             + ", ".join(s.value for s in SHOWN_STATES)) from None
    limit = PAGE_SIZE
    if "limit" in query:
        text = query["limit"]
        if not _LIMIT.fullmatch(text) or not 1 <= int(text) <= MAX_PAGE_SIZE:
            raise InputError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
        limit = int(text)
    return PageQuery(state=state, cursor=query.get("cursor"), limit=limit)


def _item_keys(record: SealedSecretRecord, sealing: str | None,
               keys: Mapping[str, dict[str, Any]]) -> str:
    groups: dict[str | None, list[str]] = {}
    for item in record.items:
        groups.setdefault(item.fingerprint, []).append(item.item)
    lines = []
    for fingerprint, names in groups.items():
        items = ", ".join(f"<code>{esc(n)}</code>" for n in names)
        if fingerprint is None:
            lines.append(f"<li>{items} → {badge('no known key', 'bad')}</li>")
            continue
        known = keys.get(fingerprint, {})
        if known.get("state") == "compromised":
            meaning = badge("compromised key", "bad")
        elif fingerprint == sealing:
            meaning = badge("sealing key", "ok")
        elif sealing is not None:
            meaning = badge("older key", "warn")
        else:
            meaning = ""
        lines.append(f"<li>{items} → {layout.key_link(fingerprint, ROOT)} {meaning}</li>")
    if not lines:
        return '<span class="muted">no items</span>'
    return f'<ul class="items">{"".join(lines)}</ul>'


def _row(record: SealedSecretRecord, sealing: str | None,
         keys: Mapping[str, dict[str, Any]], now: dt.datetime) -> str:
    state = str(record.state)
    name = (f"<b>{esc(record.name)}</b>"
            f'<div class="muted">{esc(record.scope.cli_name)}</div>')
    if record.malformed_reason:
        name += f'<div class="error">malformed: {esc(record.malformed_reason)}</div>'
    if record.synced is None:
        synced = '<span class="muted">not reported</span>'
    elif record.synced:
        synced = "yes"
    else:
        synced = (f'{badge("no", "bad")} '
                  f'<span class="error">{esc(record.synced_message or "")}</span>')
    observed = layout.when(iso(record.observed_at), now)
    return (f"<tr><td>{esc(record.namespace)}</td><td>{name}</td>"
            f"<td>{badge(state, _STATE_TONE.get(state, 'none'))}</td>"
            f"<td>{_item_keys(record, sealing, keys)}</td><td>{synced}</td>"
            f"<td>{observed}</td></tr>")


def _tabs(cluster: dict[str, Any], query: PageQuery) -> str:
    counts = cluster["sealed_secrets"]
    name = cluster["name"]
    tabs = [(None, "all", int(counts["total"]))] + [
        (state, state.value, int(counts[state.value])) for state in SHOWN_STATES]
    links = []
    for state, label, n in tabs:
        here = ' class="here"' if state == query.state else ""
        href = PageQuery(state=state, limit=query.limit).link(name)
        links.append(f'<a href="{esc(href)}"{here}>{esc(label)} <b>{n}</b></a>')
    return f'<nav class="tabs">{"".join(links)}</nav>'


def _keys_held(cluster: dict[str, Any], keys: Mapping[str, dict[str, Any]],
               now: dt.datetime) -> str:
    rows = []
    for held in cluster.get("keys", []):
        fingerprint = held["fingerprint"]
        roles = [badge("sealing", "ok")] if held["sealing"] else []
        roles.append("active" if held["active"] else '<span class="muted">not loaded</span>')
        state = held.get("state") or keys.get(fingerprint, {}).get("state") or "unknown"
        tone = {"active": "ok", "compromised": "bad"}.get(state, "none")
        rows.append(f"<tr><td>{layout.key_link(fingerprint, ROOT)}</td>"
                    f"<td>{' '.join(roles)}</td><td>{badge(state, tone)}</td>"
                    f"<td>{layout.when(held.get('not_before'), now, never='unknown')}</td></tr>")
    if not rows:
        return '<p class="muted">No key Secrets seen in this cluster.</p>'
    return ('<table class="list"><tr><th>Key</th><th>Role</th><th>State</th>'
            f'<th>NotBefore</th></tr>{"".join(rows)}</table>')


def _drift(cluster: dict[str, Any], root: str) -> str:
    detail = cluster.get("drift_detail") or {}
    parts = [status_page.drift_summary(cluster)]
    for label, fingerprints in (("Master keys missing here", detail.get("missing", [])),
                                ("Active keys outside the master set",
                                 detail.get("extra", []))):
        if fingerprints:
            links = ", ".join(layout.key_link(f, root) for f in fingerprints)
            parts.append(f"<div>{label}: {links}</div>")
    if detail.get("sealing_key_outside_master_set"):
        parts.append("<div>The sealing key is outside the master set.</div>")
    return "".join(parts)


def render(cluster: dict[str, Any], report: dict[str, Any], keys: Sequence[dict[str, Any]],
           records: Sequence[SealedSecretRecord], next_cursor: str | None,
           query: PageQuery) -> bytes:
    """The page for *cluster* (its report entry, with ``server`` where known)."""
    name = cluster["name"]
    now = layout.parse_time(report["generated_at"]) or dt.datetime.now(dt.UTC)
    period = int(report["policy"]["key_renew_period_seconds"])
    by_fingerprint = {k["fingerprint"]: k for k in keys}
    sealing = (cluster.get("sealing_key") or {}).get("fingerprint")
    server = f"<code>{esc(cluster['server'])}</code> · " if cluster.get("server") else ""
    facts = (f"<section><h2>{esc(name)} {status_page.reachability_badge(cluster)}</h2>"
             f"<div class=\"muted\">{server}last scan "
             f"{layout.when(cluster.get('last_scan_at'), now)}</div>"
             f"{status_page.problems(cluster)}"
             f"{status_page.sealing_key_summary(cluster, period, ROOT)}"
             f"{_drift(cluster, ROOT)}<h3>Keys held</h3>"
             f"{_keys_held(cluster, by_fingerprint, now)}</section>")
    shown = query.state.value if query.state else "all"
    if records:
        rows = "".join(_row(r, sealing, by_fingerprint, now) for r in records)
        listing = ('<table class="list"><tr><th>Namespace</th><th>Name</th><th>State</th>'
                   "<th>Items → sealed with</th><th>Synced</th><th>Observed</th></tr>"
                   f"{rows}</table>")
    else:
        listing = f'<p class="muted">No SealedSecrets ({esc(shown)}) on this page.</p>'
    pager = []
    if query.cursor is not None:
        pager.append(f'<a href="{esc(query.link(name, cursor=None))}">← first page</a>')
    if next_cursor is not None:
        pager.append(f'<a rel="next" href="{esc(query.link(name, cursor=next_cursor))}">'
                     "next page →</a>")
    secrets = (f"<section><h2>SealedSecrets <span class=\"muted\">{esc(shown)}, "
               f"{len(records)} on this page</span></h2>{_tabs(cluster, query)}{listing}"
               f'<div class="pager">{"".join(pager)}</div></section>')
    return layout.page(title=f"sealfleet: {name}", root=ROOT, here="cluster",
                       body=facts + secrets,
                       summary=(f"Cluster {esc(name)} · report generated "
                                f"{esc(report['generated_at'])}",))
