"""Defaults of the limits the relay enforces and clients check before sending, in one place:
the relay's settings take their defaults from here, the web UI's from the generated module."""

from __future__ import annotations

MAX_MESSAGE_CHARS = 16_000  # RELAYLINE_MAX_MESSAGE_CHARS
WS_MAX_FRAME_BYTES = 64 * 1024  # RELAYLINE_WS_MAX_FRAME_BYTES

# Terminal sessions
TERM_INPUT_MAX_BYTES = 10 * 1024  # UTF-8 bytes of one term.input's data (payload_too_large)
TERM_MIN_SIZE = 1  # columns and rows of a terminal, both ends inclusive
TERM_MAX_SIZE = 500
