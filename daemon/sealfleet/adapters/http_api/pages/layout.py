"""What every status page shares: the shell (header, navigation, CSS) and small formatters.

Pages are plain server-rendered HTML with no script (the CSP forbids any).  Links are
relative to the page (``root`` is the way back to ``/``), so the pages keep working
behind a reverse proxy that serves the API under a path prefix.  Every value that
comes from a cluster, the store or the configuration goes through :func:`esc`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from html import escape
from urllib.parse import quote, urlencode

CSS = """
:root { --ok:#2e7d32; --warn:#b45309; --bad:#c62828; --muted:#6b7280; --bg:#f8fafc;
        --line:#e5e7eb; --link:#1d4ed8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; background: var(--bg); color: #111827; }
header { padding: 14px 24px; background: #111827; color: #f9fafb; }
header h1 { margin: 0; font-size: 20px; display: flex; gap: 18px; align-items: baseline;
            flex-wrap: wrap; }
header h1 a { color: #f9fafb; text-decoration: none; }
header nav a { color: #d1d5db; font-size: 14px; font-weight: normal; margin-right: 12px; }
header nav a.here { color: #fff; font-weight: 600; text-decoration: underline; }
header p { margin: 4px 0 0; color: #d1d5db; }
a { color: var(--link); }
main { padding: 16px 24px; }
main.cards { display: grid; gap: 16px;
             grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
          padding: 14px 16px; margin-bottom: 16px; }
main.cards section { margin-bottom: 0; }
h2 { margin: 0 0 8px; font-size: 16px; display: flex; justify-content: space-between;
     align-items: center; gap: 8px; }
h3 { margin: 12px 0 6px; font-size: 14px; }
.badge { font-size: 12px; padding: 1px 8px; border-radius: 10px; color: #fff;
         white-space: nowrap; display: inline-block; }
.ok { background: var(--ok); } .warn { background: var(--warn); } .bad { background: var(--bad); }
.none { background: var(--muted); }
.muted { color: var(--muted); } code { font-size: 12px; word-break: break-all; }
.bar { height: 10px; border-radius: 5px; background: var(--line); overflow: hidden; margin: 4px 0; }
.bar > span { display: block; height: 100%; }
table { border-collapse: collapse; width: 100%; margin-top: 8px; }
td, th { text-align: left; padding: 3px 8px 3px 0; vertical-align: top; }
table.list th { border-bottom: 2px solid var(--line); font-size: 12px; color: var(--muted);
                text-transform: uppercase; letter-spacing: .03em; }
table.list td { border-bottom: 1px solid var(--line); }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.error { color: var(--bad); word-break: break-word; }
ul.items { margin: 0; padding: 0; list-style: none; }
ul.items li { margin: 0 0 2px; }
.tabs { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0 8px; }
.tabs a { padding: 3px 10px; border: 1px solid var(--line); border-radius: 14px;
          background: #fff; text-decoration: none; color: #111827; }
.tabs a.here { background: #111827; color: #fff; border-color: #111827; }
.pager { margin-top: 10px; display: flex; gap: 16px; }
"""

SHORT_FINGERPRINT = 12   # characters of the base64 digest shown: unique in any real fleet


def esc(value: object) -> str:
    """Text for HTML content and quoted attribute values."""
    return escape(str(value), quote=True)


def short_fingerprint(fingerprint: str) -> str:
    """``SHA256:abcdefghijkl…``: enough to tell keys apart at a glance."""
    head, _, digest = fingerprint.partition(":")
    if not digest or len(digest) <= SHORT_FINGERPRINT:
        return fingerprint
    return f"{head}:{digest[:SHORT_FINGERPRINT]}…"


def key_anchor(fingerprint: str) -> str:
    """The id of a key's row on the keys page (base64's ``+``, ``/`` made id-safe)."""
    digest = fingerprint.partition(":")[2] or fingerprint
    return "key-" + digest.replace("+", "-").replace("/", "_").rstrip("=")


def key_link(fingerprint: str, root: str) -> str:
    """A short fingerprint linking to the key's row; the full one as the tooltip."""
    return (f'<a href="{esc(root)}keys#{esc(key_anchor(fingerprint))}" '
            f'title="{esc(fingerprint)}"><code>{esc(short_fingerprint(fingerprint))}</code></a>')


def cluster_href(name: str, root: str, **query: str) -> str:
    """The cluster page's URL, relative to a page whose way back to ``/`` is *root*."""
    target = f"{root}clusters/{quote(name, safe='')}"
    return f"{target}?{urlencode(query)}" if query else target


def badge(text: str, tone: str) -> str:
    return f'<span class="badge {esc(tone)}">{esc(text)}</span>'


def days(seconds: float) -> str:
    return f"{seconds / 86400:.1f} d"


def ago(seconds: float) -> str:
    """A duration as a person reads it: ``40 s``, ``12 min``, ``5 h``, ``3.0 d``."""
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{int(seconds // 3600)} h"
    return days(seconds)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def when(text: str | None, now: dt.datetime, *, never: str = "never") -> str:
    """``2026-05-01 12:00 UTC (3.0 d ago)`` from an ISO time of the report."""
    moment = parse_time(text)
    if moment is None:
        return f'<span class="muted">{esc(never)}</span>'
    shown = moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    delta = (now - moment).total_seconds()
    relative = f"{ago(delta)} ago" if delta >= 0 else f"in {ago(-delta)}"
    return f'<span title="{esc(text)}">{esc(shown)}</span> <span class="muted">({relative})</span>'


def page(*, title: str, root: str, here: str, body: str, summary: Iterable[str] = (),
         refresh: int | None = None, main_class: str = "") -> bytes:
    """The whole document: head, header with navigation, and *body* inside ``<main>``."""
    links = (("overview", "", "Overview"), ("keys", "keys", "Keys"), ("jobs", "jobs", "Jobs"))
    current = ' class="here"'
    nav = "".join(f'<a href="{esc(root + href)}"{current if name == here else ""}>{label}</a>'
                  for name, href, label in links)
    lines = "".join(f"<p>{line}</p>" for line in summary)
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    css_class = f' class="{esc(main_class)}"' if main_class else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}<title>{esc(title)}</title><style>{CSS}</style></head>"
        f'<body><header><h1><a href="{esc(root)}">sealfleet</a><nav>{nav}</nav></h1>'
        f"{lines}</header><main{css_class}>{body}</main></body></html>").encode()
