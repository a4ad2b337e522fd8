"""A terminal flooding output (``yes``) while a chat on the same relay and worker streams:
the chat's answer arrives whole and right, the terminal keeps streaming, and it ends cleanly.
(How much the flood delays the chat is a measurement: bench/terminal.py.)"""

from __future__ import annotations

import pytest

from tests.fixtures import completions, local_answer, post
from tests.terminals.helpers import Setup, output_until

pytestmark = pytest.mark.timeout(60)


async def test_a_flooding_terminal_does_not_break_a_streaming_chat(setup: Setup) -> None:
    chat = await setup.tenant.chat()
    async with setup.ws() as viewer, setup.ws() as reader:
        terminal = await setup.open("yes")
        topic = f"term:{terminal}"
        await viewer.subscribe(topic)
        await output_until(viewer, topic, "y\r\ny\r\ny\r\n")
        await reader.subscribe(f"chat:{chat}")
        questions = ["a question asked while the terminal floods"]
        history: list[tuple[str, str]] = []
        for question in questions:
            turn = await post(setup.tenant, chat, question)
            done = await completions(reader, turn, timeout=30)
            history.append(("user", question))
            expected = local_answer(*history)
            assert done[turn]["data"]["content"] == expected
            deltas = "".join(
                f["data"]["text"]
                for f in reader.events(f"chat:{chat}", "message.delta")
                if f["data"]["turn_id"] == turn
            )
            assert deltas == expected
            history.append(("assistant", expected))
        # Still flooding, and in order.
        await output_until(viewer, topic, "y\r\n" * 50)
        viewer.assert_in_order(topic)
        r = await setup.tenant.http.delete(f"/v1/terminals/{terminal}", headers=setup.tenant.auth)
        assert r.status_code == 202
        exited = await viewer.expect("term.exited", 15, topic=topic)
        assert exited["data"]["reason"] == "terminated"
