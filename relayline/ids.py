"""Identifiers: time-ordered ids for rows and events, and request-id validation."""

from __future__ import annotations

import re

from ulid import ULID

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def new_id() -> str:
    """A 26-character ULID: unique, URL-safe, and sorted by creation time."""
    return str(ULID())


def valid_request_id(value: str | None) -> bool:
    """Whether a client-supplied ``X-Request-ID`` is safe to adopt (and to log)."""
    return value is not None and bool(_REQUEST_ID.match(value))
