"""The built-in model: needs nothing installed, answers deterministically, can call tools.

It exists so ``relayline demo`` and tests look and behave like the real thing: answers stream
word by word with Markdown (a quote, a list, a code block), and slash commands in the last
user message turn into tool calls:

=====================================  ===========================================
``/ls [PATH]``                         ``list_dir {"path": PATH or "."}``
``/read PATH``                         ``read_file {"path": PATH}``
``/run COMMAND``                       ``run_command {"command": COMMAND}``
``/edit PATH [CONTENT]``               ``edit_file {"path": PATH, "content": ...}``
``/tool NAME {JSON arguments}``        any tool by name
``/help``                              lists these commands
=====================================  ===========================================

After tool results it summarises them. The same messages always give the same output.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Sequence

from relayline.protocol import jsoncodec
from relayline.protocol.generation import Generation
from relayline.worker.llm.base import (
    ChatMessage,
    StreamChunk,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)

_OPENERS = (
    "Thanks for your message!",
    "Good question.",
    "Happy to help with that.",
    "Here is my take.",
)
_HELP = (
    "I'm relayline's built-in local model. I can call the workspace tools for you:\n\n"
    "- `/ls [path]`: list a directory\n"
    "- `/read path`: show a file\n"
    "- `/run command`: run a shell command (asks for approval)\n"
    "- `/edit path content`: write a file (asks for approval)\n"
    '- `/tool name {"json": "arguments"}`: call any enabled tool\n'
)
_PREVIEW_LINES = 20
_PREVIEW_CHARS = 2000
_DEFAULT_EDIT = "Written by the relayline local model.\n"


class LocalModel:
    """An :class:`~relayline.worker.llm.base.LLMClient` that runs in-process.

    Deterministic: equal ``messages`` and ``tools`` give equal chunks (the ``model`` name,
    ``temperature`` and ``top_p`` are ignored). A word is a token: ``max_tokens`` cuts the
    answer after that many words (``finish_reason`` ``length``, no tool call), and the answer
    ends before the first ``stop`` sequence. ``delay_s`` is the pause before each word (0 still
    yields to the event loop). Tool calls are only made for tools present in ``tools``. Never
    raises ``LLMError``.
    """

    def __init__(self, *, delay_s: float = 0.02) -> None:
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self.delay_s = delay_s

    async def aclose(self) -> None:
        return None

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        model: str,
        options: Generation | None = None,
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[StreamChunk]:
        text, call = respond(messages, {t.name for t in tools})
        finish = "tool_calls" if call is not None else "stop"
        if options is not None and options.stop:
            cut = min((i for i in (text.find(s) for s in options.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, call, finish = text[:cut], None, "stop"
        words = split_words(text)
        limit = options.max_tokens if options is not None else None
        if limit is not None and len(words) > limit:
            words, call, finish = words[:limit], None, "length"
        for word in words:
            await asyncio.sleep(self.delay_s)
            yield StreamChunk(text=word)
        completion = len(words)
        if call is not None:
            yield StreamChunk(tool_call=call)
            completion += len(call.arguments.split()) + 1
        yield StreamChunk(finish_reason=finish)
        prompt = sum(len(m.content.split()) + 1 for m in messages)
        yield StreamChunk(usage=Usage(prompt_tokens=prompt, completion_tokens=completion))


def split_words(text: str) -> list[str]:
    """Words with their trailing whitespace; joined they give ``text`` back exactly."""
    return [piece for piece in re.findall(r"\S*\s*", text) if piece]


def respond(messages: Sequence[ChatMessage], offered: set[str]) -> tuple[str, ToolCall | None]:
    """The text to stream and the tool call to make (if any) for this conversation."""
    if not messages:
        return "Hello! Send me a message, or `/help` to see what I can do.", None
    last = messages[-1]
    if last.role == "tool":
        return _summarise_results(messages), None
    if last.role != "user":
        return "I'm listening. What would you like to do next?", None
    command = _parse_command(last.content)
    if command is None:
        return _reply(last.content), None
    if isinstance(command, str):
        return command, None
    name, arguments = command
    if name not in offered:
        enabled = ", ".join(f"`{n}`" for n in sorted(offered)) or "none"
        return f"The `{name}` tool is not enabled for this chat (enabled: {enabled}).", None
    digest = hashlib.sha256(f"{len(messages)}|{name}|{arguments}".encode()).hexdigest()
    call = ToolCall(id=f"call_{digest[:16]}", name=name, arguments=arguments)
    return f"Sure, calling `{name}`.\n", call


def _parse_command(content: str) -> tuple[str, str] | str | None:
    """``(tool, arguments_json)``, a text answer (help or a usage error), or None (no command)."""
    text = content.strip()
    match = re.match(r"/(\w+)(?:[ \t]+([^\n]*))?(?:\n(.*))?\Z", text, re.DOTALL)
    if match is None:
        return None
    verb, rest, body = match.group(1), (match.group(2) or "").strip(), match.group(3)
    if verb == "help":
        return _HELP
    if verb == "ls":
        return "list_dir", _args(path=rest or ".")
    if verb == "read":
        return ("read_file", _args(path=rest)) if rest else "Usage: `/read path`"
    if verb == "run":
        command = "\n".join(part for part in (rest, body) if part)
        return ("run_command", _args(command=command)) if command else "Usage: `/run command`"
    if verb == "edit":
        path, _, inline = rest.partition(" ")
        if not path:
            return "Usage: `/edit path content`"
        content_text = "\n".join(part for part in (inline, body) if part) or _DEFAULT_EDIT
        return "edit_file", _args(path=path, content=content_text)
    if verb == "tool":
        name, _, raw = (rest + ("\n" + body if body else "")).partition(" ")
        try:
            # The arguments are whatever the user typed: bounded like every JSON from outside.
            parsed = jsoncodec.loads(raw.strip() or "{}")
        except ValueError:
            return "The arguments after `/tool name` must be a JSON object."
        if not name or not isinstance(parsed, dict):
            return 'Usage: `/tool name {"argument": "value"}`'
        return name, json.dumps(parsed, sort_keys=True)
    return None


def _args(**values: str) -> str:
    return json.dumps(values, sort_keys=True)


def _reply(message: str) -> str:
    flat = " ".join(message.split())
    quote = flat if len(flat) <= 160 else flat[:157] + "..."
    words = re.findall(r"[\w'-]+", flat)
    terms = sorted({w.lower() for w in words if len(w) > 3}, key=lambda w: (-len(w), w))[:3]
    opener = _OPENERS[int(hashlib.sha256(flat.encode()).hexdigest(), 16) % len(_OPENERS)]
    key_terms = ", ".join(f"`{t}`" for t in terms) or "none"
    return (
        f"{opener} Here's what I picked up from what you wrote:\n\n"
        f"> {quote or '(an empty message)'}\n\n"
        f"- **Words:** {len(words)}\n"
        f"- **Characters:** {len(flat)}\n"
        f"- **Key terms:** {key_terms}\n\n"
        "If it were a tiny program, it could be:\n\n"
        "```python\n"
        f"def answer() -> str:\n    return {quote!r}\n"
        "```\n\n"
        "I'm the built-in local model, so this reply is derived from your text rather than "
        "reasoned out. Start the worker with `--llm-url` for a real model, or send `/help` "
        "to try the tools."
    )


def _summarise_results(messages: Sequence[ChatMessage]) -> str:
    calls: dict[str, ToolCall] = {}
    results: list[ChatMessage] = []
    for message in reversed(messages):
        if message.role != "tool":
            calls = {c.id: c for c in message.tool_calls}
            break
        results.append(message)
    parts = []
    for result in reversed(results):
        call = calls.get(result.tool_call_id or "")
        name = call.name if call else "the tool"
        parts.append(_summarise_one(name, result.content))
    return "\n\n".join(parts)


def _summarise_one(name: str, content: str) -> str:
    if content.startswith("denied:"):
        return f"You declined `{name}`, so I left things as they are."
    if content.startswith("error:"):
        reason = (content[6:].strip().splitlines() or ["no details"])[0]
        return f"`{name}` did not work: {reason}"
    lines = content.splitlines()
    preview = "\n".join(lines[:_PREVIEW_LINES])[:_PREVIEW_CHARS]
    more = f"\n\n({len(lines) - _PREVIEW_LINES} more lines)" if len(lines) > _PREVIEW_LINES else ""
    longest = max((len(run) for run in re.findall(r"`+", preview)), default=0)
    fence = "`" * max(3, longest + 1)
    return (
        f"Here is what `{name}` returned ({len(lines)} lines, {len(content)} characters):\n\n"
        f"{fence}\n{preview}\n{fence}{more}"
    )
