"""Prometheus metrics of the real-time hub."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTIONS = Gauge("relayline_connections", "Open client connections", ["transport"])
EVENTS_PUBLISHED = Counter("relayline_events_published_total", "Events published to topics")
EVENTS_DELIVERED = Counter(
    "relayline_events_delivered_total", "Event deliveries to subscribers", ["transport"]
)
BYTES_SENT = Counter("relayline_bytes_sent_total", "Event bytes sent to subscribers", ["transport"])
QUEUE_DEPTH = Gauge("relayline_outbound_queued_frames", "Frames queued for slow sockets")
SLOW_CLIENT_CLOSES = Counter(
    "relayline_slow_client_disconnects_total", "Clients closed because they fell too far behind"
)
EVENTS_DROPPED = Counter(
    "relayline_events_dropped_total", "Events dropped for slow clients (drop policy)"
)
REPLAYS = Counter("relayline_replays_total", "Subscriptions resumed by replaying history")
REPLAYED_EVENTS = Counter("relayline_replayed_events_total", "Events sent by replays")
EVENTS_MISSED = Counter(
    "relayline_events_missed_total", "events.missed sent (history lost or epoch changed)"
)
CLOSE_CODES = Counter("relayline_ws_close_codes_total", "WebSocket closes by code", ["code"])
OPS = Counter("relayline_ws_ops_total", "Client ops handled", ["op", "result"])
