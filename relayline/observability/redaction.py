"""Redaction of secrets and chat content from log records.

:class:`Redactor` is a structlog processor that runs last before rendering, on structlog events
and on stdlib records alike. It works in two ways:

* by key: a field whose name looks secret (``authorization``, ``*_token``, ``api_key``, ...) has
  its value replaced by ``[redacted]`` wherever it sits: top level, nested dicts, lists, and
  header lists of ``(name, value)`` pairs. Chat-content fields (``content``, ``text``, ...)
  become ``[content omitted]`` unless chat logging was switched on.
* by shape: every string (the event message, values, formatted tracebacks) is scanned once for
  bearer credentials, secret URL query parameters, passwords in URLs, ``name=value`` secrets,
  relayline tenant keys (``rl_...``), session JWTs and ``bearer.<token>`` subprotocols.

Containers are copied only when something inside them changes, so the common case costs one
scan per string and no allocation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

from structlog.typing import EventDict, WrappedLogger

REDACTED: Final = "[redacted]"
REDACTED_JWT: Final = "[redacted-jwt]"
CONTENT_OMITTED: Final = "[content omitted]"

# Names are compared after lower-casing and mapping "-" and "." to "_".
_SECRET_NAMES: Final = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "key",
        "access_token",
        "refresh_token",
        "x_relay_signature",
        "sec_websocket_protocol",
    }
)
# Suffixes catch the many spellings of the same thing (admin_key, session_token, x_api_key,
# client_secret) at the price of some harmless over-redaction (cache_key).
_SECRET_SUFFIXES: Final = ("_key", "_token", "_secret", "_password", "_passwd", "_signature")
_CONTENT_NAMES: Final = frozenset({"content", "text", "delta", "messages", "prompt"})
# Fields the pipeline itself adds; scanning them would only cost time.
_TRUSTED_KEYS: Final = frozenset({"timestamp", "level", "logger"})

_PLAIN: Final = 0
_SECRET: Final = 1
_CONTENT: Final = 2
_MAX_DEPTH: Final = 8

_OPAQUE = r"[a-z0-9._~+/=-]+"
_SEPARATOR = r"[\"']?\s*[:=]\s*[\"']?"
_SCHEME = r"(?:(?:bearer|basic|digest|token|negotiate)\s+)?"
# Query parameters: any name ending in a secret word, "sig" and "code" included (OAuth codes,
# signed URLs), but only after "?" or "&", where such a name cannot be ordinary prose.
_QUERY_WORDS = r"(?:token|key|apikey|secret|password|passwd|pwd|sig|signature|code|credentials?)"
# Free text ("password=x", "'api_key': 'x'", "Authorization: Basic x"): the unambiguous words.
_ASSIGN_WORDS = r"(?:authorization|token|key|apikey|secret|password|passwd|pwd|signature)"

# One alternation, so a string is scanned once. Each rule has exactly one named group: the span
# to replace. Patterns are written in lower case and run on ``text.lower()``: without
# re.IGNORECASE the engine can skip ahead on literal prefixes, several times faster.
_RULES = "|".join(
    (
        r"(?P<jwt>eyj[a-z0-9_-]+\.eyj[a-z0-9_-]+\.[a-z0-9_-]*)",
        rf"bearer\.(?P<subprotocol>{_OPAQUE})",
        rf"cookie{_SEPARATOR}(?P<cookie>[^\r\n\"']+)",
        rf"bearer\s+(?P<bearer>{_OPAQUE})",
        r"://[^\s/@:]*:(?P<userinfo>[^\s/@]+)(?=@)",
        rf"[?&][a-z0-9_.-]*?{_QUERY_WORDS}=(?P<query>[^&#\s\"']+)",
        rf"{_ASSIGN_WORDS}{_SEPARATOR}{_SCHEME}(?P<assign>[^\s\"',;&]+)",
        r"rl_(?<![a-z0-9]rl_)(?P<tenant>[a-z0-9_-]{8,})",
    )
)
_PATTERN: Final = re.compile(_RULES)
# For the rare text whose lower-case form has another length ("İ"), offsets would not line up.
_PATTERN_ANY_CASE: Final = re.compile(_RULES, re.IGNORECASE)
# A string holding none of these cannot match a rule; checking them is much cheaper than a scan.
_TRIGGERS: Final = (
    "rl_", "eyj", "bearer", "cookie", "authorization", "token", "key", "secret", "passw",
    "pwd", "signature", "://", "?", "&",
)  # fmt: skip
_PLACEHOLDERS: Final = {"jwt": REDACTED_JWT}


def redact_text(text: str) -> str:
    """Return *text* with every secret-shaped substring replaced; *text* itself if none."""
    lowered = text.lower()
    for trigger in _TRIGGERS:
        if trigger in lowered:
            break
    else:
        return text
    if len(lowered) == len(text):
        matches = _PATTERN.finditer(lowered)
    else:
        matches = _PATTERN_ANY_CASE.finditer(text)
    parts: list[str] = []
    last = 0
    for match in matches:
        rule = match.lastgroup
        if rule is None:
            continue
        start, end = match.span(rule)
        parts += (text[last:start], _PLACEHOLDERS.get(rule, REDACTED))
        last = end
    if not parts:
        return text
    parts.append(text[last:])
    return "".join(parts)


@lru_cache(maxsize=4096)
def _classify(name: str) -> int:
    normal = name.lower().replace("-", "_").replace(".", "_")
    if normal in _SECRET_NAMES or normal.endswith(_SECRET_SUFFIXES):
        return _SECRET
    if normal in _CONTENT_NAMES:
        return _CONTENT
    return _PLAIN


def _kind_of(name: object) -> int:
    if isinstance(name, str):
        return _classify(name)
    if isinstance(name, bytes):  # ASGI header names
        return _classify(name.decode("latin-1"))
    return _PLAIN


class Redactor:
    """A structlog processor removing secrets and, unless allowed, chat content.

    ``omit_content`` replaces fields named ``content``, ``text``, ``delta``, ``messages`` or
    ``prompt`` (at any depth) with ``[content omitted]``; numbers and booleans in those fields
    (counts, flags) are kept because they cannot carry message text.
    """

    def __init__(self, *, omit_content: bool = True) -> None:
        self.omit_content = omit_content

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """Redact *event_dict* in place (it belongs to this record) and return it."""
        for key, value in tuple(event_dict.items()):
            if key in _TRUSTED_KEYS:
                continue
            new = self._field(_kind_of(key), value, 0)
            if new is not value:
                event_dict[key] = new
        return event_dict

    def redact(self, value: Any) -> Any:
        """Return *value* with secrets removed; the same object when nothing had to change."""
        return self._value(value, 0)

    def _field(self, kind: int, value: Any, depth: int) -> Any:
        if kind == _SECRET:
            return value if value is None else REDACTED
        if kind == _CONTENT and self.omit_content and not _is_scalar(value):
            return CONTENT_OMITTED
        return self._value(value, depth)

    def _value(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return redact_text(value)
        if value is None or isinstance(value, int | float):  # bool is an int
            return value
        if depth >= _MAX_DEPTH:
            return self._opaque(value)
        if isinstance(value, Mapping):
            return self._mapping(value, depth + 1)
        if isinstance(value, list | tuple):
            return self._sequence(value, depth + 1)
        if isinstance(value, set | frozenset):
            items = list(value)
            new = self._sequence(items, depth + 1)
            return value if new is items else new
        if isinstance(value, bytes | bytearray):
            text = bytes(value).decode("utf-8", "replace")
            clean = redact_text(text)
            return value if clean == text else clean
        return self._opaque(value)

    def _mapping(self, value: Mapping[Any, Any], depth: int) -> Any:
        changed: dict[Any, Any] | None = None
        for key, item in value.items():
            # Nested keys are data, not code (usage per API key, sessions by token): scan them.
            new_key = redact_text(key) if isinstance(key, str) else key
            new = self._field(_kind_of(key), item, depth)
            if new is not item or new_key is not key:
                if changed is None:
                    changed = dict(value)
                if new_key is not key:
                    del changed[key]
                changed[new_key] = new
        return value if changed is None else changed

    def _sequence(self, value: list[Any] | tuple[Any, ...], depth: int) -> Any:
        changed: list[Any] | None = None
        for index, item in enumerate(value):
            new = self._pair(item, depth) if _is_pair(item) else self._value(item, depth)
            if new is not item:
                if changed is None:
                    changed = list(value)
                changed[index] = new
        if changed is None:
            return value
        return tuple(changed) if isinstance(value, tuple) else changed

    def _pair(self, item: list[Any] | tuple[Any, ...], depth: int) -> Any:
        # (name, value) pairs, as in ASGI scopes and httpx header lists: the name decides.
        name, value = item
        new_name = self._value(name, depth)
        new = self._field(_kind_of(name), value, depth)
        if new is value and new_name is name:
            return item
        return (new_name, new) if isinstance(item, tuple) else [new_name, new]

    @staticmethod
    def _opaque(value: Any) -> Any:
        # Renderers fall back to repr() for unknown objects (URLs, exceptions, models); redact
        # that text, and keep the object untouched when it holds nothing secret.
        text = repr(value)
        clean = redact_text(text)
        return value if clean == text else clean


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, int | float)


def _is_pair(item: object) -> bool:
    return isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str | bytes)
