"""JSON from outside, decoded with a bound on nesting.

Python's decoder recurses once per level, so a frame of 60,000 ``[`` raises ``RecursionError``
deep inside it. Everything the relay (or the worker) decodes from a peer goes through
:func:`loads`, which refuses more than :data:`MAX_JSON_DEPTH` levels with :class:`JsonTooDeep`
(a ``ValueError``, so callers that already answer invalid JSON answer this the same way).

Cost: the number of ``[`` and ``{`` in the text bounds its depth and is counted at C speed, so
only a text with more brackets than the bound is looked at again: without its string literals,
then level by level (regular expressions, also at C speed).
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_DEPTH = 64  # no frame of the protocol nests beyond a handful of levels

_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_PAIRS = re.compile(r"\[\]|\{\}")
_OPENERS = re.compile(r"[\[{]+")


class JsonTooDeep(ValueError):
    """The text nests arrays and objects deeper than :data:`MAX_JSON_DEPTH`."""

    def __init__(self, limit: int = MAX_JSON_DEPTH) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit


def depth_within(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests at most ``limit`` levels (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= limit:
        return True
    # Brackets inside strings (code in an answer, say) do not nest anything. Escaped
    # backslashes, then escaped quotes, go first; every quote left delimits a string, so the
    # text outside strings is every other piece between quotes (all of it at C speed).
    text = "".join(text.replace("\\\\", "").replace('\\"', "").split('"')[0::2])
    if text.count("[") + text.count("{") <= limit:
        return True
    # Remove the innermost pairs, a level per pass: a document `limit` deep is empty after
    # `limit` passes. Every pass runs at C speed (a loop per character would not).
    brackets = _NOT_BRACKETS.sub("", text)
    for level in range(limit + 1):
        reduced = _PAIRS.sub("", brackets)
        if reduced == brackets:
            # Nothing pairs up any more (an unbalanced text: the decoder refuses it), but its
            # unclosed openers still nest as deep as their longest run.
            longest = max((len(run) for run in _OPENERS.findall(brackets)), default=0)
            return level + longest <= limit
        brackets = reduced
    return False


def loads(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with the nesting bound; raises ``ValueError`` (``JsonTooDeep`` past it)."""
    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise ValueError("JSON text is not UTF-8") from None
    if not depth_within(text, limit):
        raise JsonTooDeep(limit)
    try:
        return json.loads(text)
    except RecursionError:  # not reachable within the bound; kept as the last line of defence
        raise JsonTooDeep(limit) from None
