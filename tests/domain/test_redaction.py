"""Masking of secrets in free text: what log lines and stored errors share."""

from __future__ import annotations

import pytest

from sealfleet.domain.redaction import REDACTED, mask_text

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretbits\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(("text", "secret"), [
    (f"key was {PEM} here", "MIIEowIBAAKCAQEAsecretbits"),
    ("sent Authorization: Bearer abc.DEF-123_tok", "abc.DEF-123_tok"),
    ("GET https://admin:hunter2@10.0.0.1:6443/api failed", "hunter2"),
    ("proxy http://user@proxy:3128 refused", "user@"),
])
def test_secrets_in_text_are_masked(text: str, secret: str) -> None:
    masked = mask_text(text)
    assert secret not in masked
    assert REDACTED in masked


def test_text_without_secrets_is_unchanged() -> None:
    text = "GET https://10.0.0.1:6443/api/v1/secrets: HTTP 503: etcd leader changed"
    assert mask_text(text) == text
