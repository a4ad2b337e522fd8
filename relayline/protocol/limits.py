"""Defaults of the limits the relay enforces and clients check before sending, in one place:
the relay's settings take their defaults from here, the web UI's from the generated module."""

from __future__ import annotations

MAX_MESSAGE_CHARS = 16_000  # RELAYLINE_MAX_MESSAGE_CHARS
WS_MAX_FRAME_BYTES = 64 * 1024  # RELAYLINE_WS_MAX_FRAME_BYTES
