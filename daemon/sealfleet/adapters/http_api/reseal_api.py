"""``POST /api/v1/reseal``: start a reseal job (``202`` with its document), or with
``dry_run: true`` answer the plan (``200``; nothing journaled).  ``409`` when refused.

The body is the selection (``states``, ``clusters``, ``repos``, ``namespaces``,
``names``, ``scopes``, ``sources``, ``include_git``) and ``dry_run``; the daemon's
reseal executor sits behind :class:`ResealPlanner`, so this adapter never imports the
app layer.  Like every mutation it needs the admin token over TCP (dry runs too: a
plan names every stale object of the fleet).
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from sealfleet.adapters.http_api import jobs_api
from sealfleet.adapters.store.records import JsonObject
from sealfleet.errors import InputError, RefusedError

PATH = "/api/v1/reseal"


class ResealPlanner(Protocol):
    """The daemon's reseal executor, for dry runs."""

    async def dry_run(self, params: JsonObject) -> JsonObject: ...


RESEAL: web.AppKey[ResealPlanner | None] = web.AppKey("reseal_planner")


async def reseal(request: web.Request) -> web.Response:
    body = await jobs_api._body(request)
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InputError("dry_run must be true or false")
    if "after_job" in body:
        raise InputError("unknown field 'after_job'")
    if not dry_run:
        return await jobs_api._submit(request, "reseal", body)
    planner = request.app[RESEAL]
    if planner is None:
        raise web.HTTPServiceUnavailable(reason="this server runs no jobs")
    try:
        plan = await planner.dry_run(body)
    except RefusedError as refused:
        return jobs_api._json({"error": {"code": "refused", "message": str(refused)}},
                              status=409)
    return jobs_api._json(plan)


def register(app: web.Application, *, planner: ResealPlanner | None) -> None:
    app[RESEAL] = planner
    app.router.add_post(PATH, reseal)
