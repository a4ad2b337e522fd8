"""``GET /v1/events?topics=…``: a topic's events over Server-Sent Events.

Resuming: ``Last-Event-ID: <epoch>:<seq>`` (EventSource sends the last ``id:`` it saw). Epochs
are per topic and random, so the epoch names the topic it belongs to; that topic is replayed
from ``seq``, and every other topic of the stream gets ``events.missed`` (its position is
unknown, so the client reloads its snapshot). Heartbeats are comment lines. The slow-client
rule is the WebSocket one: a bounded queue (:class:`~relayline.hub.sse.SseSink`), and past it
the stream ends; so does a stream whose credential is revoked or expires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from relayline.api.deps import Caller, State
from relayline.envelope import validate_topic
from relayline.errors import ValidationFailed
from relayline.hub.sse import SseSink, parse_last_event_id
from relayline.observability import hub_metrics as m

router = APIRouter(tags=["events"])


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    request: Request,
    who: Caller,
    st: State,
    topics: Annotated[str, Query(min_length=1, max_length=2000)],
    last_event_id: Annotated[str | None, Header(max_length=100)] = None,
) -> StreamingResponse:
    wanted = list(dict.fromkeys(t.strip() for t in topics.split(",") if t.strip()))
    if not wanted or len(wanted) > st.settings.ws_max_subscriptions:
        raise ValidationFailed(f"topics: 1 to {st.settings.ws_max_subscriptions} topics")
    for topic in wanted:
        validate_topic(topic)
        await st.acl.check(who, topic)
    resume = parse_last_event_id(last_event_id)
    sink = SseSink(who, st.settings.ws_queue_max_bytes, st.settings.ws_queue_max_events)
    hub = st.hub
    subscribed: set[str] = set()
    try:
        for topic in wanted:
            if resume is None:
                await hub.subscribe(sink, "sse", topic, None, None)
            else:
                # A foreign epoch makes the hub send events.missed for that topic.
                await hub.subscribe(sink, "sse", topic, resume[0], resume[1])
            subscribed.add(topic)
    except BaseException:
        hub.drop(sink, "sse", subscribed)
        raise
    heartbeat = st.settings.heartbeat_interval_s

    async def stream() -> AsyncIterator[bytes]:
        m.CONNECTIONS.labels("sse").inc()
        st.credentials.watch(sink)
        try:
            yield b"retry: 2000\n\n"
            while not sink.closed:
                wait = heartbeat
                if who.expires_at is not None:  # wake at the session token's expiry too
                    wait = min(wait, max(who.expires_at - time.time(), 0.0) + 0.05)
                try:
                    await asyncio.wait_for(sink.wakeup.wait(), wait)
                except TimeoutError:
                    if st.credentials.expired(sink, time.time()):
                        break
                    yield b": ping\n\n"
                    continue
                frames = sink.take()
                if frames and not sink.closed:
                    yield b"".join(frames)
        finally:
            st.credentials.unwatch(sink)
            hub.drop(sink, "sse", subscribed)
            m.CONNECTIONS.labels("sse").dec()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
