"""What a worker learns from its OpenAI-compatible upstream at start: how many streams it serves
at once and where its tokenizer is.

A server that serves fewer streams than the worker would start does not queue the extra ones:
llama-cpp-python's server (one stream at a time) *interrupts* the running answer when a second
request arrives, ending it with ``[DONE]`` and no ``finish_reason``. So the worker never starts
more streams than the server has slots. Recognised servers:

=======================  ====================================  ===============================
server                   how it is recognised                  slots / tokenizer
=======================  ====================================  ===============================
llama.cpp ``llama-       ``GET /props`` answers                ``total_slots`` /
server``                 ``total_slots``                       ``POST /tokenize``
llama-cpp-python         ``GET …/models`` lists models         1 /
``llama_cpp.server``     ``owned_by: "me"``                    ``POST /extras/tokenize/count``
anything else (vLLM,     neither                               unknown (``RELAYLINE_LLM_MAX_
Ollama, OpenAI…)                                               INFLIGHT`` rules) / none
=======================  ====================================  ===============================

Every probe is best effort and bounded: a server that answers neither is "unknown".

The turn's correlation id goes to the server as ``X-Request-ID`` (:func:`request_id_header`).
llama-cpp-python's server refuses any ``X-Request-ID`` that is not a UUID (HTTP 400, empty
body), so it gets the id in UUID form: a ULID (the relay's own ids) is the same 128 bits
written as a UUID; any other id, a name-based UUID of it. The worker logs both.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from relayline.protocol import jsoncodec

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Tokenizer:
    """An HTTP tokenizer: POST ``{field: text}`` to ``url``; the count is the integer at
    ``count_field``, or the length of the list at ``tokens_field``."""

    url: str
    field: str
    count_field: str | None = None
    tokens_field: str | None = None

    async def count(self, http: httpx.AsyncClient, text: str) -> int | None:
        """Tokens in ``text``, or None when the tokenizer did not answer as expected."""
        with contextlib.suppress(httpx.HTTPError, ValueError, TypeError, KeyError):
            r = await http.post(self.url, json={self.field: text}, timeout=PROBE_TIMEOUT_S)
            if r.status_code != 200:
                return None
            body = jsoncodec.loads(r.content)
            if self.count_field is not None:
                value = body[self.count_field]
                return value if isinstance(value, int) and value >= 0 else None
            tokens = body[self.tokens_field]
            return len(tokens) if isinstance(tokens, list) else None
        return None


@dataclass(frozen=True, slots=True)
class UpstreamInfo:
    server: str  # "llama.cpp", "llama-cpp-python" or "unknown"
    slots: int | None = None
    tokenizer: Tokenizer | None = None
    uuid_request_ids: bool = False  # X-Request-ID must be a UUID


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}
_ID_NAMESPACE = uuid.UUID("6f1d3c1e-8a43-4b8e-9d0c-7a6e2b1f4c55")


def as_uuid(request_id: str) -> str:
    """``request_id`` as a UUID: a ULID's own 128 bits, else a name-based UUID of it."""
    if len(request_id) == 26 and request_id[0] in "01234567":
        value = 0
        for char in request_id.upper():
            digit = _CROCKFORD.get(char)
            if digit is None:
                break
            value = value * 32 + digit
        else:
            return str(uuid.UUID(int=value))
    return str(uuid.uuid5(_ID_NAMESPACE, request_id))


def request_id_header(info: UpstreamInfo, request_id: str | None) -> dict[str, str] | None:
    """The ``X-Request-ID`` header carrying ``request_id`` to this server (None: none)."""
    if not request_id:
        return None
    return {"X-Request-ID": as_uuid(request_id) if info.uuid_request_ids else request_id}


def _origin(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


async def _get_json(http: httpx.AsyncClient, url: str) -> Any:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        r = await http.get(url, timeout=PROBE_TIMEOUT_S)
        if r.status_code == 200:
            return jsoncodec.loads(r.content)
    return None


async def probe(http: httpx.AsyncClient, base_url: str) -> UpstreamInfo:
    """Recognise the server behind ``base_url`` (an OpenAI-compatible ``…/v1`` URL)."""
    origin = _origin(base_url)
    props = await _get_json(http, f"{origin}/props")
    if isinstance(props, dict) and isinstance(props.get("total_slots"), int):
        slots = props["total_slots"]
        return UpstreamInfo(
            "llama.cpp",
            slots if slots >= 1 else None,
            Tokenizer(f"{origin}/tokenize", "content", tokens_field="tokens"),
        )
    models = await _get_json(http, base_url.rstrip("/") + "/models")
    with contextlib.suppress(KeyError, IndexError, TypeError, AttributeError):
        if models["data"][0]["owned_by"] == "me":
            return UpstreamInfo(
                "llama-cpp-python",
                1,
                Tokenizer(f"{origin}/extras/tokenize/count", "input", count_field="count"),
                uuid_request_ids=True,
            )
    return UpstreamInfo("unknown")
