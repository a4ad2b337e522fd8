"""JSON from outside, decoded with a bound on nesting.

Python's decoder recurses once per level, so a frame of 60,000 ``[`` raises ``RecursionError``
deep inside it. Everything the relay (or the worker) decodes from a peer goes through
:func:`loads`, which refuses more than :data:`MAX_JSON_DEPTH` levels with :class:`JsonTooDeep`
(a ``ValueError``, so callers that already answer invalid JSON answer this the same way).

:func:`loads` decodes first and then walks the containers it got (the decoder itself stops at
the interpreter's recursion limit with ``RecursionError``, taken as too deep): the walk costs
one step per array or object, nothing per character, so a frame of terminal output whose string
is full of ``ESC [`` costs no more than its decoding.

:func:`depth_within` answers the same question of a text without decoding it (a request body is
checked before it is routed). Cost: the number of ``[`` and ``{`` in the text bounds its depth
and is counted at C speed, so only a text with more brackets than the bound is looked at again,
also at C speed: its string literals are cut out, its brackets kept, and the innermost pairs
removed a level per pass.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64  # no frame of the protocol nests beyond a handful of levels

# Only the brackets are kept, as ``(`` and ``)``: a bracket closed by the other kind is an
# error where the decoder stops, so what follows it does not matter.
_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class JsonTooDeep(ValueError):
    """The text nests arrays and objects deeper than :data:`MAX_JSON_DEPTH`."""

    def __init__(self, limit: int = MAX_JSON_DEPTH) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit

    def __repr__(self) -> str:
        return f"JsonTooDeep(limit={self.limit})"


def depth_within(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` (bytes: UTF-8) nests at most ``limit`` levels; brackets inside strings
    do not count.

    Exact for valid JSON. For invalid JSON it may only answer False where the decoder would
    have failed before reaching that depth: no invalid text gets past it to a deeper recursion.
    """
    if isinstance(text, str):
        if text.count("[") + text.count("{") <= limit:
            return True
        # UTF-8 never encodes another character with the bytes of ASCII ones, so the brackets,
        # quotes and backslashes are the same in bytes; bytes have the C-speed translate below.
        data = text.encode("utf-8", "surrogatepass")
    else:
        data = text
        if data.count(b"[") + data.count(b"{") <= limit:
            return True
    if b'\\"' in data:
        # Only an escaped quote moves where a string ends; escaped backslashes go first so that
        # the quote of `\\"` still ends its string.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Every quote left opens or closes a string: the text outside strings is every other piece.
    parens = b"".join(data.split(b'"')[0::2]).translate(_PARENS, _NOT_BRACKETS)
    if parens.count(b"(") <= limit:
        return True
    if len(parens) - len(parens.lstrip(b"(")) > limit:
        return False  # a flood of openers, refused without the passes (slow on long runs)
    # Each pass removes the innermost pairs, one level: a document `limit` deep is empty after
    # `limit` passes.
    for level in range(limit + 1):
        reduced = parens.replace(b"()", b"")
        if reduced == parens:
            # Nothing pairs up any more: what is left is closers, then openers (an unbalanced
            # text, which the decoder refuses), and those openers nest around the levels removed.
            return level + parens.count(b"(") <= limit
        parens = reduced
    return False


def value_depth_within(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a decoded JSON value nests at most ``limit`` arrays and objects deep."""
    if value.__class__ is not dict and value.__class__ is not list:
        return True
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return False
        for child in container.values() if container.__class__ is dict else container:
            if child.__class__ is dict or child.__class__ is list:
                stack.append((child, depth + 1))
    return True


def loads(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with the nesting bound; raises ``ValueError`` (``JsonTooDeep`` past it)."""
    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise ValueError("JSON text is not UTF-8") from None
    try:
        value = json.loads(text)
    except RecursionError:  # deeper than the interpreter's limit, far past the bound
        raise JsonTooDeep(limit) from None
    if not value_depth_within(value, limit):
        raise JsonTooDeep(limit)
    return value
