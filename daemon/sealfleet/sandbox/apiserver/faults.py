"""Fault injection for one emulated apiserver: what unreliable clusters do to a client.

Settings are plain data (the same JSON shape over ``GET/POST /_sandbox/faults``):

- ``latency_ms``: added before every response;
- ``error_rate`` with ``error_code`` (500, 503 or 429; 429 carries ``Retry-After:
  retry_after_seconds``): that fraction of requests fail with a proper Status;
- ``drop_rate``: that fraction of requests get their connection closed with no response;
- ``watch_cut_after``: watch streams are cut (connection aborted) after N events;
- ``outage``: the listener is closed (connection refused) and open connections dropped;
  setting it back to false listens again on the same port;
- ``gone_next_watch``: the next watch request gets an ERROR event with a 410 Status.

The fault endpoint itself is never subject to faults, so tests can always turn them off.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from sealfleet.sandbox.objects import ApiError

_ERROR_REASONS = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests"}


@dataclasses.dataclass
class Faults:
    latency_ms: int = 0
    error_rate: float = 0.0
    error_code: int = 503
    retry_after_seconds: int = 1
    drop_rate: float = 0.0
    watch_cut_after: int | None = None
    outage: bool = False
    gone_next_watch: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: Any) -> Faults:
        """A copy with ``changes`` applied; 400 BadRequest names the offending key."""
        if not isinstance(changes, dict):
            raise ApiError(400, "BadRequest", "faults: body must be a JSON object")
        current = self.to_json()
        for key, value in changes.items():
            if key not in current:
                raise ApiError(400, "BadRequest", f"faults: unknown setting {key!r}")
            current[key] = value
        result = Faults(**current)
        result.validate()
        return result

    def validate(self) -> None:
        def bad(message: str) -> ApiError:
            return ApiError(400, "BadRequest", f"faults: {message}")

        for name in ("error_rate", "drop_rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise bad(f"{name} must be a number between 0 and 1")
        if self.error_code not in _ERROR_REASONS:
            raise bad("error_code must be 500, 503 or 429")
        for name in ("latency_ms", "retry_after_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad(f"{name} must be a non-negative integer")
        cut = self.watch_cut_after
        if cut is not None and (not isinstance(cut, int) or isinstance(cut, bool) or cut < 0):
            raise bad("watch_cut_after must be null or a non-negative integer")
        for name in ("outage", "gone_next_watch"):
            if not isinstance(getattr(self, name), bool):
                raise bad(f"{name} must be a boolean")

    def roll_error(self, rng: random.Random) -> ApiError | None:
        if self.error_rate and rng.random() < self.error_rate:
            code = self.error_code
            messages = {
                500: "Internal error occurred: injected fault",
                503: "the server is currently unable to handle the request",
                429: "Too many requests, please try again later.",
            }
            return ApiError(
                code,
                _ERROR_REASONS[code],
                messages[code],
                retry_after=self.retry_after_seconds if code == 429 else None,
            )
        return None

    def roll_drop(self, rng: random.Random) -> bool:
        return bool(self.drop_rate) and rng.random() < self.drop_rate
