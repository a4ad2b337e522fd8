"""Prometheus metrics of terminal sessions as the relay sees them (the worker counts its own,
see ``relayline.worker.terminals.metrics``). Labels are bounded: ``outcome`` and ``code`` are
error codes or ``ok``, ``reason`` a ``TermExitReason``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from relayline.protocol.names import TermExitReason

SESSIONS = Gauge("relayline_terminal_sessions", "Terminal sessions this instance's workers run now")
OPENS = Counter(
    "relayline_terminal_opens_total",
    "Terminal opens, by outcome (ok or the error code of the refusal)",
    ["outcome"],
)
OUTPUT_BYTES = Counter(
    "relayline_terminal_output_bytes_total",
    "Characters of terminal output published to term:<id> topics (snapshots included)",
)
INPUT_REFUSED = Counter(
    "relayline_terminal_input_refused_total",
    "term.input and term.resize ops refused, by error code",
    ["code"],
)
EXITS = Counter("relayline_terminal_exits_total", "Terminal sessions ended, by reason", ["reason"])

for _reason in TermExitReason:
    EXITS.labels(_reason.value)
