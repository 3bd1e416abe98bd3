"""``GET /jobs``: the jobs in progress and the most recent ones, from the job journal.

Two bounded reads of ``store.jobs.list_jobs`` (in progress; newest ``RECENT``).  Each
job shows its kind, state, per-object progress, times and error.  Job parameters are
names and options (never secrets, by the journal's contract) and are shown cut short.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

from sealfleet.adapters.http_api.pages import layout
from sealfleet.adapters.http_api.pages.layout import badge, esc
from sealfleet.adapters.store.records import JobRecord
from sealfleet.domain.staleness import iso

RECENT = 50                 # finished jobs shown
IN_PROGRESS = ("running", "pending")
ROOT = ""
_PARAMS_SHOWN = 160         # characters of a job's parameters
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


def _params(job: JobRecord) -> str:
    text = json.dumps(dict(job.params), separators=(", ", ": "), ensure_ascii=False,
                      sort_keys=True)
    if text == "{}":
        return ""
    shown = text if len(text) <= _PARAMS_SHOWN else text[:_PARAMS_SHOWN] + "…"
    return f"<code>{esc(shown)}</code>"


def _table(jobs: Sequence[JobRecord], now: dt.datetime) -> str:
    rows = []
    for job in jobs:
        error = f'<div class="error">{esc(job.error)}</div>' if job.error else ""
        rows.append(f'<tr><td><b>{esc(job.kind)}</b><div class="muted"><code>'
                    f"{esc(job.id)}</code></div></td>"
                    f"<td>{badge(job.state, _STATE_TONE.get(job.state, 'none'))}</td>"
                    f"<td>{_progress(job)}</td>"
                    f"<td>{layout.when(iso(job.created_at), now)}</td>"
                    f"<td>{layout.when(iso(job.updated_at), now)}</td>"
                    f"<td>{error}{_params(job)}</td></tr>")
    return ('<table class="list"><tr><th>Job</th><th>State</th><th>Progress</th>'
            "<th>Created</th><th>Updated</th><th>Error / parameters</th></tr>"
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
