"""The protocol's catalogues: the design's close-code table, one action per code, and the web
UI's generated copy in step with them."""

from __future__ import annotations

import subprocess
import sys

from relayline.protocol import jsmodule
from relayline.protocol.close_codes import ACTIONS, DEFAULT_ACTION, ClientAction, Close
from relayline.protocol.names import EventType, Op, WorkerFrame


def test_every_close_code_has_its_designed_action() -> None:
    assert set(ACTIONS) == set(Close)
    assert ACTIONS[Close.UNAUTHENTICATED] is ClientAction.NEW_TOKEN
    assert ACTIONS[Close.FORBIDDEN] is ClientAction.STOP
    assert ACTIONS[Close.HEARTBEAT_TIMEOUT] is ClientAction.NOW
    assert ACTIONS[Close.SLOW] is ClientAction.NOW
    # The design: reconnect to any instance and resume, jittered so a restart is no stampede.
    assert ACTIONS[Close.RESTARTING] is ClientAction.JITTERED
    assert ACTIONS[Close.RATE_LIMITED] is ClientAction.BACKOFF
    assert DEFAULT_ACTION is ClientAction.BACKOFF


def test_the_design_names_are_the_wire_names() -> None:
    assert {o.value for o in Op} >= {"subscribe", "unsubscribe", "send", "cancel", "approve"}
    assert {"term.input", "term.resize", "ping"} <= {o.value for o in Op}
    assert EventType.EVENTS_MISSED == "events.missed"
    assert EventType.MESSAGE_DELTA == "message.delta"
    terminal_events = {"term.output", "term.state", "term.exited"}
    assert terminal_events <= {e.value for e in EventType}
    assert terminal_events | {"term.open", "term.input", "term.resize", "term.close"} <= {
        f.value for f in WorkerFrame
    }


def test_the_generated_js_module_is_up_to_date() -> None:
    expected = jsmodule.render()
    assert jsmodule.TARGET.read_text(encoding="utf-8") == expected, (
        "relayline/web/static/sdk/protocol.js is stale: python -m relayline.protocol.jsmodule"
    )
    assert jsmodule.TYPES_TARGET.read_text(encoding="utf-8") == jsmodule.render_types(), (
        "relayline/web/static/sdk/protocol.d.ts is stale: python -m relayline.protocol.jsmodule"
    )
    for code, action in ACTIONS.items():
        assert f'"{int(code)}": "{action}"' in expected
        assert f'"{int(code)}": "{action}";' in jsmodule.render_types()
    check = subprocess.run(
        [sys.executable, "-m", "relayline.protocol.jsmodule", "--check"], capture_output=True
    )
    assert check.returncode == 0, check.stderr


def test_the_drift_check_fails_on_a_stale_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    stale = tmp_path / "protocol.js"
    types = tmp_path / "protocol.d.ts"
    stale.write_text(jsmodule.render().replace('"jittered"', '"backoff"'), encoding="utf-8")
    types.write_text(jsmodule.render_types(), encoding="utf-8")
    monkeypatch.setattr(jsmodule, "TARGET", stale)
    monkeypatch.setattr(jsmodule, "TYPES_TARGET", types)
    assert jsmodule.main(["--check"]) == 1
    assert jsmodule.main([]) == 0 and jsmodule.main(["--check"]) == 0
    # The declarations alone out of date fail the check too.
    types.write_text(jsmodule.render_types().replace('"jittered"', '"backoff"'), encoding="utf-8")
    assert jsmodule.main(["--check"]) == 1
    types.unlink()
    assert jsmodule.main(["--check"]) == 1
