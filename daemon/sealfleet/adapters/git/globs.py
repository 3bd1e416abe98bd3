"""Path patterns of a ``[[repos]]`` entry: relative, ``/``-separated, ``**`` for any depth.

``*`` matches within one path segment, ``?`` one character of a segment, ``[...]`` a set
(``[!...]`` its complement), and a ``**`` segment any number of segments, none
included: ``**/*.yaml`` matches ``a.yaml`` and ``apps/prod/db.yaml``.  Written here
rather than taken from ``fnmatch`` (whose ``*`` crosses ``/``) or ``glob.translate``
(Python 3.13): the patterns must mean the same on every supported Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence


class GlobError(ValueError):
    """A pattern that cannot be used; the message says why (never raised for a path)."""


def _segment(part: str, pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(part):
        char = part[i]
        if char == "*":
            if part[i:i + 2] == "**":
                raise GlobError(f"{pattern!r}: ** must be a whole path segment (as in a/**/b)")
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = part.find("]", i + 2 if part[i + 1:i + 2] in ("!", "^", "]") else i + 1)
            if end < 0:
                raise GlobError(f"{pattern!r}: [ without a closing ]")
            body = part[i + 1:end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            escaped = body.replace("\\", "\\\\").replace("[", "\\[")
            out.append(f"[{'^/' if negate else ''}{escaped}]")
            i = end
        elif char == "\\":
            if i + 1 == len(part):
                raise GlobError(f"{pattern!r}: ends with an escaping \\")
            out.append(re.escape(part[i + 1]))
            i += 1
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """The regular expression for *pattern*; GlobError says why one is unusable."""
    if not pattern:
        raise GlobError("empty pattern")
    if "\0" in pattern or "\n" in pattern:
        raise GlobError(f"{pattern!r}: contains a NUL or newline")
    if pattern.startswith("/"):
        raise GlobError(f"{pattern!r}: must be relative to the working tree")
    text = pattern.removeprefix("./")
    parts = text.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise GlobError(f"{pattern!r}: empty, '.' or '..' path segment")
    regex = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            regex.append(".*" if last else "(?:[^/]+/)*")
        else:
            regex.append(_segment(part, pattern) + ("" if last else "/"))
    try:
        return re.compile("".join(regex) + r"\Z", re.DOTALL)
    except re.error as exc:   # a set such as [z-a]
        raise GlobError(f"{pattern!r}: {exc.msg}") from None


def matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A predicate: does a '/'-separated relative path match any of *patterns*?"""
    compiled = [compile_glob(p) for p in patterns]
    return lambda path: any(c.match(path) for c in compiled)
