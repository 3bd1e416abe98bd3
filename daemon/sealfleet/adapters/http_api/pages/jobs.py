"""``GET /jobs``: the jobs in progress and the most recent ones, from the job journal.

Bounded reads of ``store.jobs.list_jobs`` (each unfinished state; newest ``RECENT``).
Each job shows its kind, who asked, state, step progress, times and error, and links to
its JSON document (``/api/v1/jobs/{id}``, with every step).  Parameters and results are
names, fingerprints and counts (never secrets, by the journal's contract), cut short.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from urllib.parse import quote

from sealfleet.adapters.http_api.pages import layout
from sealfleet.adapters.http_api.pages.layout import badge, esc
from sealfleet.adapters.store.records import JobRecord, JsonObject
from sealfleet.domain.jobs import JobState
from sealfleet.domain.staleness import iso

RECENT = 50                 # finished jobs shown
IN_PROGRESS = tuple(state.value for state in JobState if not state.finished)
ROOT = ""
_JSON_SHOWN = 160           # characters of a job's parameters or result
_STATE_TONE = {"succeeded": "ok", "failed": "bad", "running": "warn", "pending": "none",
               "cancelled": "none"}
_ITEM_ORDER = ("done", "failed", "skipped", "running", "pending")


def _progress(job: JobRecord) -> str:
    total = sum(job.items.values())
    if not total:
        return '<span class="muted">no objects</span>'
    done = sum(job.items.get(s, 0) for s in ("done", "failed", "skipped"))
    parts = ", ".join(f"{job.items[s]} {s}" for s in _ITEM_ORDER if job.items.get(s))
    tone = "bad" if job.items.get("failed") else "ok"
    return (f"<div>{done} of {total} <span class=\"muted\">({esc(parts)})</span></div>"
            f'<div class="bar"><span class="{tone}" '
            f'style="width:{done / total * 100:.1f}%"></span></div>')


def _compact(label: str, value: JsonObject) -> str:
    text = json.dumps(dict(value), separators=(", ", ": "), ensure_ascii=False,
                      sort_keys=True)
    if text == "{}":
        return ""
    shown = text if len(text) <= _JSON_SHOWN else text[:_JSON_SHOWN] + "…"
    return f'<div><span class="muted">{label}</span> <code>{esc(shown)}</code></div>'


def _times(job: JobRecord, now: dt.datetime) -> tuple[str, str]:
    started = layout.when(iso(job.started_at or job.created_at), now)
    if job.finished_at is not None:
        return started, layout.when(iso(job.finished_at), now)
    return started, (f'<span class="muted">not yet; last step</span> '
                     f"{layout.when(iso(job.updated_at), now)}")


def _table(jobs: Sequence[JobRecord], now: dt.datetime) -> str:
    rows = []
    for job in jobs:
        error = f'<div class="error">{esc(job.error)}</div>' if job.error else ""
        started, finished = _times(job, now)
        href = f"{ROOT}api/v1/jobs/{quote(job.id, safe='')}"
        rows.append(f"<tr><td><b>{esc(job.kind)}</b>"
                    f'<div class="muted"><a href="{esc(href)}"><code>{esc(job.id)}</code></a>'
                    f"<br>by {esc(job.actor)}</div></td>"
                    f"<td>{badge(job.state, _STATE_TONE.get(job.state, 'none'))}</td>"
                    f"<td>{_progress(job)}</td><td>{started}</td><td>{finished}</td>"
                    f"<td>{error}{_compact('parameters', job.params)}"
                    f"{_compact('result', job.result)}</td></tr>")
    return ('<table class="list"><tr><th>Job</th><th>State</th><th>Steps</th>'
            "<th>Started</th><th>Finished</th><th>Error, parameters, result</th></tr>"
            f'{"".join(rows)}</table>')


def render(in_progress: Sequence[JobRecord], recent: Sequence[JobRecord],
           now: dt.datetime) -> bytes:
    running_ids = {job.id for job in in_progress}
    finished = [job for job in recent if job.id not in running_ids]
    sections = [
        "<section><h2>In progress</h2>"
        + (_table(in_progress, now) if in_progress
           else '<p class="muted">No job is running or pending.</p>') + "</section>",
        f"<section><h2>Recent <span class=\"muted\">newest {RECENT}</span></h2>"
        + (_table(finished, now) if finished
           else '<p class="muted">No jobs have run yet.</p>') + "</section>",
    ]
    return layout.page(title="sealfleet: jobs", root=ROOT, here="jobs",
                       body="".join(sections), refresh=15,
                       summary=(f"{len(in_progress)} in progress · as of "
                                f"{esc(iso(now))}",))
