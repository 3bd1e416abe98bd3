"""Errors as the apiserver reports them: HTTP code, machine reason and a ``kind: Status`` body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sealfleet.sandbox.objects.resources import ResourceType

Obj = dict[str, Any]
Causes = list[tuple[str, str, str]]  # (field, reasonType, message) of a 422


class ApiError(Exception):
    """An error as the apiserver reports it: HTTP code, machine reason, human message."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Obj | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def status(self) -> Obj:
        """The ``kind: Status`` body the real apiserver sends with this error."""
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        details = dict(self.details or {})
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        if details:
            body["details"] = details
        return body


def _details(rtype: ResourceType | None, name: str | None) -> Obj:
    details: Obj = {}
    if name:
        details["name"] = name
    if rtype is not None:
        if rtype.group:
            details["group"] = rtype.group
        details["kind"] = rtype.plural
    return details


def not_found(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{rtype.qualified} "{name}" not found', details=_details(rtype, name)
    )


def already_exists(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{rtype.qualified} "{name}" already exists',
        details=_details(rtype, name),
    )


def conflict(rtype: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rtype.qualified} "{name}": {why}',
        details=_details(rtype, name),
    )


def invalid(rtype: ResourceType, name: str, causes: Causes) -> ApiError:
    """422 Invalid; each cause is (field, reasonType, message) as field.Error renders it."""
    text = ", ".join(f"{field}: {msg}" for field, _, msg in causes)
    details = _details(rtype, name)
    details["kind"] = rtype.kind
    details["causes"] = [
        {"reason": reason, "message": msg, "field": field} for field, reason, msg in causes
    ]
    return ApiError(422, "Invalid", f'{rtype.kind} "{name}" is invalid: {text}', details=details)


def gone(message: str, *, reason: str = "Expired") -> ApiError:
    return ApiError(410, reason, message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def too_old(since: int, oldest: int) -> ApiError:
    return gone(f"too old resource version: {since} ({oldest})")
