"""Masking secrets inside free text: one definition for log lines and stored errors.

Error text that comes from outside (an HTTP body, a connection error naming a URL) is
kept as ``last_error`` in the inventory and served by the API, not only logged, so the
adapters mask it where they build the message, with the same rules the log redaction
applies: PEM blocks, bearer tokens, and credentials in URLs (``scheme://user:pass@``).
"""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----.*?(?:-----END \1-----|\Z)", re.DOTALL)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def mask_text(text: str) -> str:
    """Mask PEM blocks, bearer tokens and URL credentials inside free text."""
    if "-----BEGIN" in text:
        text = _PEM_BLOCK.sub(lambda m: f"-----BEGIN {m.group(1)}----- {REDACTED}", text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if "@" in text and "://" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return text
