"""A terminal's output as its worker sends it (``term.output``), read without a full decode.

The worker writes a plain output frame (no snapshot) as compact JSON, keys in this order:
``{"type":"term.output","id":"<session>","data":"<text>"}``. A flood of output is most of the
bytes a relay handles for a terminal, and decoding each frame only to encode its text again for
the viewers' event cost the relay more than everything else it does with it. :func:`parse`
reads a frame of exactly that layout: it checks and decodes the text's JSON string and hands
back the string as it came, which the event can carry as it is. The check is orjson's (strict
JSON; about three times as fast on a flood's lines as the standard library's string reader,
which writes out the text between each CR LF escape on its own); a string orjson refuses is
judged again by the standard library's reader (:func:`json.decoder.scanstring`, what
:func:`json.loads` uses), which also takes an escaped lone surrogate, as JSON allows. Anything
else (another key order, spaces, a snapshot, an id with an escape or a control character) is
not read here: it is decoded as any other frame, with the same outcome.
"""

from __future__ import annotations

import json.decoder
from collections.abc import Callable

import orjson

from relayline.protocol.names import WorkerFrame

# The standard decoder's string reader (its C routine in CPython): (text, index after the
# opening quote) -> (the string, index after the closing quote); strict, as json.loads.
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]

PREFIX = '{"type":"' + WorkerFrame.TERM_OUTPUT + '","id":"'
_DATA = '","data":"'


def parse(text: str) -> tuple[str, str, str] | None:
    """``(session id, output, output's JSON string as sent)`` of a plain output frame in the
    worker's layout; None for any other text (including a frame that is not valid JSON)."""
    if not text.startswith(PREFIX):
        return None
    start = len(PREFIX)
    id_end = text.find('"', start)
    if id_end < 0 or not text.startswith(_DATA, id_end):
        return None
    session_id = text[start:id_end]
    if "\\" in session_id or not session_id.isprintable():
        return None  # an escape, or a character JSON refuses unescaped: the full decode judges
    literal_start = id_end + len(_DATA) - 1  # the string's opening quote
    if not text.endswith('"}') or len(text) - literal_start < 3:
        return None
    # From one quote to the other: valid JSON there is one string, nothing before or after it.
    literal = text[literal_start:-1]
    try:
        data = orjson.loads(literal)
    except orjson.JSONDecodeError:
        try:  # a lone surrogate's escape; otherwise a quote inside, a bad escape, a control
            data, literal_end = _scanstring(text, literal_start + 1)
        except ValueError:
            return None
        if literal_end != len(text) - 1:
            return None
    if not isinstance(data, str):
        return None
    return session_id, data, literal
