"""Error text that is stored as last_error and served by the API is masked at the source."""

from __future__ import annotations

from sealfleet.adapters.kube.client import status_message


def test_error_bodies_that_become_last_error_are_masked() -> None:
    """A non-Status error body ends up in the stored, served last_error: masked there."""
    assert "tok3n" not in status_message("upstream said: Bearer tok3n\nmore")
    body = '{"kind": "Status", "message": "bad cert -----BEGIN PRIVATE KEY-----xyz"}'
    assert "xyz" not in status_message(body)
