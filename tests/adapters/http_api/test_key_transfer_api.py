"""Key imports and exports carry private keys: never on the TCP listener, whatever the
token (the unix socket path is tested with the real daemon in tests/lifecycle)."""

from __future__ import annotations

from apitesting import ADMIN_TOKEN, READ_TOKEN, Api


async def test_imports_and_exports_are_refused_over_tcp_even_with_the_admin_token(
        api: Api) -> None:
    for path in ("/api/v1/keys/import", "/api/v1/keys/export"):
        status, body, _ = await api.get(path, method="POST", via="tcp", token=ADMIN_TOKEN)
        assert status == 403, body
        assert body["error"]["code"] == "forbidden"
        assert "unix socket" in body["error"]["message"]
        status, body, _ = await api.get(path, method="POST", via="tcp", token=READ_TOKEN)
        assert status == 403
        status, _, _ = await api.get(path, method="POST", via="tcp")
        assert status == 401


def test_an_export_request_never_shows_its_passphrase() -> None:
    from sealfleet.adapters.http_api.key_transfer_api import ExportRequest

    asked = ExportRequest(passphrase="correct horse battery staple")
    assert "correct horse" not in repr(asked)
    assert asked.passphrase == "correct horse battery staple"
