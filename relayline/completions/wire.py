"""OpenAI's chat-completions wire format: the request the gateway accepts, and the chunks,
responses and errors it answers with.

Requests are checked strictly where relayline acts on a field (the sampling settings follow
:class:`~relayline.protocol.generation.Generation`: ``true`` is not a temperature, ``5.0`` not a
token count) and leniently elsewhere: fields OpenAI clients send that change nothing here
(``user``, ``seed``, ``metadata``…) are accepted and ignored, so existing tools work unchanged.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from relayline.errors import ValidationFailed
from relayline.protocol.generation import GENERATION_FIELDS, Generation

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
MAX_TOOLS = 128


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    arguments: str = "{}"


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: Annotated[str, StringConstraints(max_length=200)] | None = None

    def text(self, where: str) -> str:
        """The message's text: a string, or its text parts joined (other parts: 422)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts: list[str] = []
        for i, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise ValidationFailed(
                    f"{where}.content.{i}: only text parts are supported (got {part.type!r})"
                )
            texts.append(part.text)
        return "".join(texts)


class FunctionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\w-]+$")]
    description: Annotated[str, StringConstraints(max_length=4096)] | None = None
    parameters: dict[str, Any] | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionIn


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionIn(BaseModel):
    """``POST /v1/chat/completions``'s body (the fields relayline reads)."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName
    messages: list[MessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Any = None
    top_p: Any = None
    max_tokens: Any = None
    max_completion_tokens: Any = None
    stop: Any = None
    n: int | None = None
    tools: list[ToolIn] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None

    def generation(self) -> dict[str, Any]:
        """The sampling settings, checked like a tenant's (422 naming the field)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else None
        values = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": limit if limit is not None else self.max_tokens,
            "stop": stop,
        }
        try:
            checked = Generation.model_validate(
                {k: v for k, v in values.items() if k in GENERATION_FIELDS and v is not None}
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ()))
            if field.startswith("max_tokens") and self.max_completion_tokens is not None:
                field = "max_completion_tokens" + field[len("max_tokens") :]
            raise ValidationFailed(f"{field}: {first.get('msg', 'invalid')}") from None
        return checked.wire()

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def wire_messages(body: ChatCompletionIn) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The request's messages as the worker protocol carries them (``role``, ``content``,
    ``tool_calls`` as ``{id, name, arguments}``, ``tool_call_id``), and as ``(role, text)`` to
    store. ``developer`` is OpenAI's newer name for ``system``."""
    wire: list[dict[str, Any]] = []
    texts: list[tuple[str, str]] = []
    for i, message in enumerate(body.messages):
        where = f"messages.{i}"
        role = "system" if message.role == "developer" else message.role
        text = message.text(where)
        item: dict[str, Any] = {"role": role, "content": text}
        if message.tool_calls:
            if role != "assistant":
                raise ValidationFailed(f"{where}.tool_calls: only assistant messages have them")
            item["tool_calls"] = [
                {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in message.tool_calls
            ]
        if role == "tool":
            if not message.tool_call_id:
                raise ValidationFailed(f"{where}.tool_call_id: required for a tool message")
            item["tool_call_id"] = message.tool_call_id
        wire.append(item)
        texts.append((role, text))
    return wire, texts


def wire_tools(body: ChatCompletionIn) -> dict[str, Any]:
    """The completion's tools and tool choice as the worker passes them upstream."""
    out: dict[str, Any] = {}
    if body.tools:
        out["tools"] = [
            {"type": "function", "function": t.function.model_dump(exclude_none=True)}
            for t in body.tools
        ]
    if body.tool_choice is not None:
        if not body.tools and body.tool_choice != "none":
            raise ValidationFailed("tool_choice: needs tools")
        out["tool_choice"] = body.tool_choice
    return out


# Responses


def completion_id(turn_id: str) -> str:
    return f"chatcmpl-{turn_id}"


def now_s() -> int:
    return int(time.time())


def chunk(
    cid: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    *,
    with_usage: bool = False,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (``usage: null`` on every chunk but the last when the
    client asked for usage, as OpenAI does)."""
    out: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if with_usage:
        out["usage"] = None
    return out


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``payload``."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class TextChunks:
    """A streamed completion's text chunks as server-sent events, byte for byte what
    ``sse(chunk(...))`` gives: what every chunk shares is encoded once, each text only once."""

    def __init__(self, cid: str, model: str, created: int, *, with_usage: bool) -> None:
        shared = json.dumps(
            {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model},
            separators=(",", ":"),
        )
        self._head = (
            "data: " + shared[:-1] + ',"choices":[{"index":0,"delta":{"content":'
        ).encode()
        self._tail = (
            '},"finish_reason":null}]' + (',"usage":null' if with_usage else "") + "}\n\n"
        ).encode()

    def text(self, text: str) -> bytes:
        return self._head + json.dumps(text).encode() + self._tail


def usage_of(metrics: dict[str, Any]) -> dict[str, int]:
    tokens_in = metrics.get("tokens_in")
    tokens_out = metrics.get("tokens_out")
    prompt = tokens_in if isinstance(tokens_in, int) else 0
    completion = tokens_out if isinstance(tokens_out, int) else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def usage_chunk(cid: str, model: str, created: int, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def response(
    cid: str,
    model: str,
    created: int,
    text: str,
    tool_calls: list[dict[str, Any]],
    finish_reason: str,
    usage: dict[str, int],
) -> dict[str, Any]:
    """A whole ``chat.completion`` (``stream: false``)."""
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    else:
        message["content"] = text
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }


# OpenAI's error ``type`` by HTTP status (the body also carries relayline's ``code``).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, code: str, detail: str, request_id: str) -> dict[str, Any]:
    """One error object in both shapes: OpenAI's (``message``, ``type``, ``param``, ``code``)
    and relayline's (``code``, ``detail``, ``request_id``)."""
    return {
        "error": {
            "message": detail,
            "type": error_type(status),
            "param": None,
            "code": code,
            "detail": detail,
            "request_id": request_id,
        }
    }
