"""Fixtures of the HTTP API tests (helpers live in apitesting.py)."""

from apitesting import api

__all__ = ["api"]
