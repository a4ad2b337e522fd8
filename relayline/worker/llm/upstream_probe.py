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
"""

from __future__ import annotations

import contextlib
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
            )
    return UpstreamInfo("unknown")
