"""The relay's terminal metrics follow what happened: opens by outcome, refused input by code,
output published, exits by reason, sessions running."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from relayline.testing import OpError
from tests.terminals.helpers import Setup, output_until

pytestmark = pytest.mark.timeout(60)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_relay_counts_terminals(setup: Setup) -> None:
    opened = metric("relayline_terminal_opens_total", outcome="ok")
    unknown = metric("relayline_terminal_opens_total", outcome="unknown_program")
    too_large = metric("relayline_terminal_input_refused_total", code="payload_too_large")
    terminated = metric("relayline_terminal_exits_total", reason="terminated")
    output = metric("relayline_terminal_output_bytes_total")
    r = await setup.tenant.http.post(
        "/v1/terminals", json={"program": "nope", "cols": 80, "rows": 24}, headers=setup.tenant.auth
    )
    assert r.status_code == 422
    async with setup.ws() as ws:
        terminal = await setup.open("cat")
        topic = f"term:{terminal}"
        await ws.subscribe(topic)
        assert metric("relayline_terminal_sessions") >= 1
        with pytest.raises(OpError):
            await ws.send_op("term.input", topic=topic, data="x" * 20_000)
        await ws.send_op("term.input", topic=topic, data="counted\n")
        await output_until(ws, topic, "counted\r\ncounted")
        await setup.tenant.http.delete(f"/v1/terminals/{terminal}", headers=setup.tenant.auth)
        await ws.expect("term.exited", 10, topic=topic)
    assert metric("relayline_terminal_opens_total", outcome="ok") == opened + 1
    assert metric("relayline_terminal_opens_total", outcome="unknown_program") == unknown + 1
    assert (
        metric("relayline_terminal_input_refused_total", code="payload_too_large") == too_large + 1
    )
    assert metric("relayline_terminal_exits_total", reason="terminated") == terminated + 1
    assert metric("relayline_terminal_output_bytes_total") >= output + len("counted\r\n") * 2
