"""Resource endpoints: the URL layout and verbs of the real apiserver over an ObjectStore.

Paths: ``/api/v1[/watch][/namespaces/{ns}]/{plural}[/{name}[/{subresource}]]`` and the
same under ``/apis/{group}/{version}``.  Verbs map as on a real cluster (GET collection =
list or watch, DELETE collection = deletecollection, ...).  Lists are built by joining
each object's stored JSON bytes, so a 500-item page costs a join, not a serialization.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Any

from aiohttp import web
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from sealfleet.sandbox.apiserver import (
    decoding,
    discovery,
    patching,
    protobuf,
    proxy,
    tables,
    watching,
)
from sealfleet.sandbox.apiserver.auth import authorize
from sealfleet.sandbox.apiserver.context import ClusterContext
from sealfleet.sandbox.apiserver.discovery import Served
from sealfleet.sandbox.apiserver.selectors import Selector
from sealfleet.sandbox.objects import (
    ApiError,
    Entry,
    Obj,
    bad_request,
    dump,
    gone,
    method_not_allowed,
)

JSON = "application/json"


@dataclasses.dataclass(frozen=True)
class Target:
    served: Served
    namespace: str | None
    name: str | None
    subresource: str | None
    subpath: str  # after .../proxy/, for the service proxy
    legacy_watch: bool

    @property
    def resource(self) -> str:
        return self.served.rtype.key


def not_found_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def parse_path(path: str) -> Target | None:
    """The resource a path addresses, or None when it is not a resource path."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[1] == "api" and parts[2] == "v1":
        group, version, rest = "", "v1", parts[3:]
    elif len(parts) >= 4 and parts[1] == "apis":
        group, version, rest = parts[2], parts[3], parts[4:]
    else:
        return None
    trailing = rest[3:] if len(rest) > 3 else []
    if rest and rest[-1] == "" and not trailing:
        rest = rest[:-1]
    if not rest:
        return None
    legacy_watch = rest[0] == "watch"
    if legacy_watch:
        rest = rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        inner = discovery.find(group, version, rest[2])
        if inner is not None and inner.rtype.namespaced:
            namespace, rest = rest[1], rest[2:]
    if not rest:
        raise not_found_path()
    served = discovery.find(group, version, rest[0])
    if served is None:
        raise not_found_path()
    name = rest[1] if len(rest) > 1 and rest[1] else None
    subresource = rest[2] if len(rest) > 2 else None
    subpath = "/".join(rest[3:]) if len(rest) > 3 else ""
    if subresource is not None and subresource not in {s for s, _, _ in served.subresources}:
        raise not_found_path()
    if subresource != "proxy" and len(rest) > 3:
        raise not_found_path()
    if served.rtype.namespaced and name is not None and namespace is None:
        raise not_found_path()
    return Target(served, namespace, name, subresource, subpath, legacy_watch)


def verb_of(method: str, target: Target, watch: bool) -> str:
    if method == "GET":
        if watch or target.legacy_watch:
            return "watch"
        return "get" if target.name else "list"
    if method == "DELETE":
        return "delete" if target.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def json_response(body: Any, status: int = 200, content_type: str = JSON) -> web.Response:
    raw = body if isinstance(body, bytes) else dump(body)
    return web.Response(body=raw, status=status, headers={"Content-Type": content_type})


def flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


async def read_json(request: web.Request, kind: str) -> Any:
    """The request body as JSON data (kubectl's protobuf bodies are decoded to the same)."""
    raw = await request.read()
    if not raw:
        raise bad_request("the request body is empty")
    if request.headers.get("Content-Type", "").startswith(protobuf.PROTOBUF):
        return protobuf.decode_object(raw)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f'{kind} in version "v1" cannot be handled: {exc}') from None


def _check_type_meta(served: Served, body: Any) -> Obj:
    if not isinstance(body, dict):
        raise bad_request("the object provided is not a JSON object")
    rtype = served.rtype
    if body.get("apiVersion") not in (None, "", rtype.api_version):
        raise bad_request(
            f"the API version in the data ({body['apiVersion']}) does not match the expected "
            f"API version ({rtype.api_version})"
        )
    if body.get("kind") not in (None, "", rtype.kind):
        raise bad_request(
            f"the kind in the data ({body['kind']}) does not match the expected kind ({rtype.kind})"
        )
    return body


class ResourceHandlers:
    """One instance per apiserver; ``handle`` serves every resource request."""

    def __init__(self, ctx: ClusterContext) -> None:
        self.ctx = ctx

    async def handle(self, request: web.Request, target: Target, user: str) -> web.StreamResponse:
        query = request.query
        watch = flag(query.get("watch"))
        verb = verb_of(request.method, target, watch)
        rtype = target.served.rtype
        self.ctx.requests[(verb, rtype.plural)] += 1
        authorize(
            user,
            verb=verb,
            resource=rtype.plural,
            group=rtype.group,
            namespace=target.namespace,
            name=target.name,
            protected_namespace=self.ctx.controller_namespace,
        )
        allowed = {sub: verbs for sub, _, verbs in target.served.subresources}.get(
            target.subresource or "", target.served.verbs
        )
        if verb not in allowed:
            raise method_not_allowed(
                "the server does not allow this method on the requested resource"
            )
        if target.subresource == "proxy":
            return await proxy.forward(self.ctx, request, target)
        if verb == "watch":
            return await watching.serve(self.ctx, request, target)
        if verb == "list":
            return self.list(request, target)
        if verb == "get":
            entry = self.ctx.store.entry(target.resource, target.namespace, str(target.name))
            if not tables.wants_table(request.headers.get("Accept", "")):
                return json_response(entry.raw)  # the stored bytes: nothing to parse
            return self.respond_object(request, target, entry.obj())
        if verb == "create":
            return await self.create(request, target)
        if verb == "update":
            return await self.update(request, target)
        if verb == "patch":
            return await self.patch(request, target)
        if verb == "delete":
            return await self.delete(request, target)
        if verb == "deletecollection":
            return await self.delete_collection(request, target)
        raise method_not_allowed("the server does not allow this method on the requested resource")

    # ------------------------------------------------------------------- reads

    def respond_object(
        self,
        request: web.Request,
        target: Target,
        obj: Obj,
        status: int = 200,
        warnings: list[str] | None = None,
        raw: bytes | None = None,
    ) -> web.Response:
        """*obj* as the client asked for it (*raw*: its serialized form, when known)."""
        accept = request.headers.get("Accept", "")
        if tables.wants_table(accept):
            include = request.query.get("includeObject", "Metadata")
            body = tables.table(target.resource, [obj], include_object=include)
            response = json_response(body, status, tables.TABLE_CONTENT_TYPE)
        else:
            response = json_response(raw if raw is not None else obj, status)
        for name, value in decoding.warning_headers(warnings or []):
            response.headers.add(name, value)
        return response

    @staticmethod
    def _check_fields(request: web.Request, target: Target, obj: Obj) -> list[str]:
        mode = request.query.get("fieldValidation")
        return decoding.check_fields(target.served.rtype, obj, mode)

    def list(self, request: web.Request, target: Target) -> web.Response:
        query = request.query
        store = self.ctx.store
        selector = Selector.parse(
            query.get("labelSelector"), query.get("fieldSelector"), resource=target.resource
        )
        limit = _int_param(query.get("limit"), "limit")
        after: tuple[str, str] | None = None
        list_rv = store.resource_version
        token = query.get("continue")
        if token:
            list_rv, after = decode_continue(token)
            store.check_list_rv(list_rv)
        else:
            _check_list_resource_version(store.oldest_watchable_rv, query.get("resourceVersion"))
        entries = store.entries(target.resource, target.namespace, after=after)
        picked: list[Entry] = []
        next_key: tuple[str, str] | None = None
        remaining: int | None = None
        scanned = 0
        for entry in entries:
            scanned += 1
            if selector.empty or selector.matches(entry):
                picked.append(entry)
                if limit and len(picked) >= limit:
                    break
        if limit and len(picked) >= limit and scanned < len(entries):
            last = picked[-1]
            next_key = (last.namespace, last.name)
            if selector.empty:
                remaining = len(entries) - scanned
        meta: Obj = {"resourceVersion": str(list_rv)}
        if next_key is not None:
            meta["continue"] = encode_continue(list_rv, next_key)
            if remaining is not None:
                meta["remainingItemCount"] = remaining
        rtype = target.served.rtype
        if tables.wants_table(request.headers.get("Accept", "")):
            include = query.get("includeObject", "Metadata")
            body = tables.table(
                target.resource, (e.obj() for e in picked), include_object=include, list_meta=meta
            )
            return json_response(body, 200, tables.TABLE_CONTENT_TYPE)
        head = dump(
            {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": meta}
        )
        raw = b"".join((head[:-1], b',"items":[', b",".join(e.raw for e in picked), b"]}"))
        return json_response(raw)

    # ------------------------------------------------------------------ writes

    def _dry_run(self, request: web.Request) -> bool:
        values = request.query.getall("dryRun", [])
        for value in values:
            if value != "All":
                raise bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
        return bool(values)

    def _require_namespace(self, namespace: str | None) -> None:
        if namespace is None:
            return
        try:
            self.ctx.store.entry("namespaces", None, namespace)
        except ApiError:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                details={"name": namespace, "kind": "namespaces"},
            ) from None

    def _read_only(self, target: Target) -> None:
        if target.resource == "customresourcedefinitions.apiextensions.k8s.io":
            raise method_not_allowed(
                "the server does not allow this method on the requested resource "
                "(customresourcedefinitions are read-only in the sealfleet sandbox)"
            )

    async def create(self, request: web.Request, target: Target) -> web.Response:
        self._read_only(target)
        if target.name is not None:
            raise method_not_allowed(
                "the server does not allow this method on the requested resource"
            )
        body = _check_type_meta(target.served, await read_json(request, target.served.rtype.kind))
        warnings = self._check_fields(request, target, body)
        self._require_namespace(target.namespace)
        created = self.ctx.store.create(
            target.resource, target.namespace, body, dry_run=self._dry_run(request)
        )
        return self.respond_object(request, target, created, 201, warnings)

    async def update(self, request: web.Request, target: Target) -> web.Response:
        self._read_only(target)
        body = _check_type_meta(target.served, await read_json(request, target.served.rtype.kind))
        warnings = self._check_fields(request, target, body)
        store = self.ctx.store
        dry_run = self._dry_run(request)
        updated = store.update(
            target.resource,
            target.namespace,
            str(target.name),
            body,
            subresource=target.subresource,
            dry_run=dry_run,
        )
        stored = store.entry(target.resource, target.namespace, str(target.name))
        if dry_run or str(stored.rv) != updated["metadata"]["resourceVersion"]:
            stored_raw = None  # not stored, or written again meanwhile by a listener
        else:
            stored_raw = stored.raw  # what was just stored: no second serialization
        return self.respond_object(request, target, updated, warnings=warnings, raw=stored_raw)

    async def patch(self, request: web.Request, target: Target) -> web.Response:
        self._read_only(target)
        content_type = request.headers.get("Content-Type", "")
        raw = await request.read()
        name = str(target.name)
        store = self.ctx.store
        custom = target.served.rtype.group == "bitnami.com"
        is_apply = content_type.startswith(patching.APPLY_PATCH)
        if is_apply:
            if not request.query.get("fieldManager"):
                raise ApiError(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                    "is required for apply patch",
                )
            patch_body = _load_yaml(raw)
        else:
            try:
                patch_body = json.loads(raw or b"null")
            except ValueError as exc:
                raise bad_request(f"error decoding patch: {exc}") from None
        dry_run = self._dry_run(request)
        try:
            original = store.get(target.resource, target.namespace, name)
        except ApiError as exc:
            if not (is_apply and exc.code == 404 and target.subresource is None):
                raise
            body = _check_type_meta(target.served, patch_body)
            body.setdefault("metadata", {})["name"] = name
            warnings = self._check_fields(request, target, body)
            self._require_namespace(target.namespace)
            created = store.create(target.resource, target.namespace, body, dry_run=dry_run)
            return self.respond_object(request, target, created, 201, warnings)
        patched = patching.apply_patch(content_type, original, patch_body, custom=custom)
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched object is not a JSON object")
        warnings = self._check_fields(request, target, patched)
        if is_apply:  # apply does not use the caller's resourceVersion as a precondition
            patched.setdefault("metadata", {})["resourceVersion"] = original["metadata"][
                "resourceVersion"
            ]
        updated = store.update(
            target.resource,
            target.namespace,
            name,
            patched,
            subresource=target.subresource,
            dry_run=dry_run,
        )
        return self.respond_object(request, target, updated, warnings=warnings)

    async def _delete_options(self, request: web.Request) -> Obj:
        raw = await request.read()
        options: Obj = {}
        if raw.strip():
            try:
                loaded = json.loads(raw)
            except ValueError as exc:
                raise bad_request(f"error decoding DeleteOptions: {exc}") from None
            if isinstance(loaded, dict):
                options = loaded
        if "propagationPolicy" in request.query:
            options["propagationPolicy"] = request.query["propagationPolicy"]
        if "gracePeriodSeconds" in request.query:
            options["gracePeriodSeconds"] = request.query["gracePeriodSeconds"]
        grace = options.get("gracePeriodSeconds")
        if grace is not None:
            try:
                options["gracePeriodSeconds"] = int(grace)
            except (TypeError, ValueError):
                raise bad_request(f"invalid gracePeriodSeconds {grace!r}") from None
        return options

    async def delete(self, request: web.Request, target: Target) -> web.Response:
        self._read_only(target)
        options = await self._delete_options(request)
        preconditions = options.get("preconditions") or {}
        name = str(target.name)
        deleted = self.ctx.store.delete(
            target.resource,
            target.namespace,
            name,
            uid=preconditions.get("uid"),
            resource_version=preconditions.get("resourceVersion"),
            propagation=options.get("propagationPolicy") or "Background",
            grace_period=options.get("gracePeriodSeconds"),
            dry_run=self._dry_run(request),
        )
        rtype = target.served.rtype
        if rtype.group == "bitnami.com" or self._still_terminating(target, deleted):
            # Custom resources return the deleted object; so does a graceful deletion
            # that is still under way (a Pod its kubelet has yet to stop).
            return json_response(deleted)
        details: Obj = {"name": name, "kind": rtype.plural, "uid": deleted["metadata"]["uid"]}
        if rtype.group:
            details["group"] = rtype.group
        return json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
        )

    def _still_terminating(self, target: Target, deleted: Obj) -> bool:
        if not deleted["metadata"].get("deletionTimestamp"):
            return False
        try:
            entry = self.ctx.store.entry(target.resource, target.namespace, str(target.name))
        except ApiError:
            return False
        return bool(entry.uid == deleted["metadata"].get("uid"))

    async def delete_collection(self, request: web.Request, target: Target) -> web.Response:
        self._read_only(target)
        options = await self._delete_options(request)
        selector = Selector.parse(
            request.query.get("labelSelector"),
            request.query.get("fieldSelector"),
            resource=target.resource,
        )
        dry_run = self._dry_run(request)
        store = self.ctx.store
        victims = [
            (e.namespace or None, e.name)
            for e in store.entries(target.resource, target.namespace)
            if selector.empty or selector.matches(e)
        ]
        deleted: list[Obj] = []
        for namespace, name in victims:
            try:
                deleted.append(
                    store.delete(
                        target.resource,
                        namespace,
                        name,
                        propagation=options.get("propagationPolicy") or "Background",
                        grace_period=options.get("gracePeriodSeconds"),
                        dry_run=dry_run,
                    )
                )
            except ApiError as exc:  # already collected as someone's dependent
                if exc.code != 404:
                    raise
        rtype = target.served.rtype
        return json_response(
            {
                "kind": f"{rtype.kind}List",
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(store.resource_version)},
                "items": deleted,
            }
        )


# ---------------------------------------------------------------------- helpers


def _int_param(value: str | None, name: str) -> int:
    if value in (None, ""):
        return 0
    try:
        number = int(str(value))
    except ValueError:
        raise bad_request(f"invalid {name} parameter {value!r}") from None
    if number < 0:
        raise bad_request(f"invalid {name} parameter {value!r}")
    return number


def _check_list_resource_version(oldest: int, value: str | None) -> None:
    if value in (None, "", "0"):
        return
    try:
        rv = int(str(value))
    except ValueError:
        raise bad_request(f"invalid resource version: {value}") from None
    if rv < oldest:
        raise gone(f"too old resource version: {rv} ({oldest})")


def encode_continue(rv: int, key: tuple[str, str]) -> str:
    """The real token's shape: base64 JSON of the list's revision and the next start key."""
    start = f"{key[0]}/{key[1]}\x00" if key[0] else f"{key[1]}\x00"
    token = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded))
        rv = int(data["rv"])
        start = str(data["start"])
        if data.get("v") != "meta.k8s.io/v1" or not start.endswith("\x00"):
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion"
        ) from None
    key = start[:-1]
    namespace, _, name = key.rpartition("/")
    return rv, (namespace, name)


def _load_yaml(raw: bytes) -> Any:
    try:
        return YAML(typ="safe", pure=True).load(raw.decode())
    except (YAMLError, UnicodeDecodeError) as exc:
        raise bad_request(f"error decoding YAML: {exc}") from None
