"""An :class:`~relayline.worker.llm.base.LLMClient` that counts and times the calls of another.

Per call: the open-streams gauge up and down, one counter and one duration by outcome at the
end, and the first text delta's latency. Per chunk it only checks whether the first text has
been seen, so the streaming path stays as fast as the client it wraps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from relayline.protocol.generation import Generation
from relayline.worker import metrics
from relayline.worker.llm.base import (
    ChatMessage,
    LLMClient,
    LLMError,
    StreamChunk,
    ToolChoice,
    ToolSpec,
)
from relayline.worker.llm.upstream_probe import UpstreamInfo

_UNKNOWN = UpstreamInfo("unknown")


class InstrumentedLLM:
    """Wraps ``inner``; its metrics carry the ``upstream`` label ``label`` (see
    :func:`relayline.worker.metrics.upstream_label`)."""

    def __init__(self, inner: LLMClient, label: str) -> None:
        self.inner = inner
        self.label = label
        self._open_streams = metrics.LLM_OPEN_STREAMS.labels(label)
        self._first_token = metrics.LLM_FIRST_TOKEN.labels(label)
        for outcome in metrics.LLM_OUTCOMES:
            metrics.LLM_CALLS.labels(label, outcome)  # every outcome's series exists, at 0

    @property
    def upstream(self) -> UpstreamInfo:
        """What the wrapped client learned of its server (``X-Request-ID`` needs it)."""
        info = getattr(self.inner, "upstream", _UNKNOWN)
        return info if isinstance(info, UpstreamInfo) else _UNKNOWN

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        model: str,
        options: Generation | None = None,
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[StreamChunk]:
        started = time.perf_counter()
        outcome = "internal"
        awaiting_text = True
        self._open_streams.inc()
        chunks = (
            self.inner.stream(messages, tools, model=model, options=options)
            if tool_choice is None
            else self.inner.stream(
                messages, tools, model=model, options=options, tool_choice=tool_choice
            )
        )
        try:
            async for chunk in chunks:
                if awaiting_text and chunk.text is not None:
                    awaiting_text = False
                    self._first_token.observe(time.perf_counter() - started)
                yield chunk
            outcome = "ok"
        except LLMError as exc:
            outcome = exc.category
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            try:
                if isinstance(chunks, AsyncGenerator):
                    # Stop the upstream request now, not whenever the generator is collected.
                    await chunks.aclose()
            finally:
                self._open_streams.dec()
                metrics.LLM_CALLS.labels(self.label, outcome).inc()
                metrics.LLM_CALL_SECONDS.labels(self.label, outcome).observe(
                    time.perf_counter() - started
                )

    async def aclose(self) -> None:
        await self.inner.aclose()
