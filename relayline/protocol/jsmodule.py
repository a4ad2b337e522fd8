"""The web UI's copy of the protocol's catalogues, generated from this package.

    python -m relayline.protocol.jsmodule           # rewrite relayline/web/static/js/protocol.js
    python -m relayline.protocol.jsmodule --check   # exit 1 when the file is out of date

``tests/test_protocol_js.py`` fails when the checked-in file differs from what this renders.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from enum import Enum
from pathlib import Path

from relayline.protocol import limits
from relayline.protocol.close_codes import ACTIONS, DEFAULT_ACTION, RESTART_SPREAD_MS, Close
from relayline.protocol.jsoncodec import MAX_JSON_DEPTH
from relayline.protocol.names import (
    ErrorCode,
    EventType,
    FailureCategory,
    FinishReason,
    Op,
    TermExitReason,
)

TARGET = Path(__file__).resolve().parents[1] / "web" / "static" / "js" / "protocol.js"


def _object(values: Mapping[str, object]) -> str:
    body = "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in values.items())
    return "Object.freeze({\n" + body + "})"


def _names(enum: type[Enum]) -> str:
    return _object({member.name: member.value for member in enum})


def render() -> str:
    actions = {str(int(code)): str(action) for code, action in ACTIONS.items()}
    parts = [
        "// Generated from relayline/protocol by `python -m relayline.protocol.jsmodule`.",
        "// Do not edit: change the Python catalogue and regenerate.",
        "",
        "/** WebSocket close codes by name. */",
        f"export const CLOSE = {_names(Close)};",
        "",
        "/** What a client does after each close code (anything else: DEFAULT_CLOSE_ACTION). */",
        f"export const CLOSE_ACTIONS = {_object(actions)};",
        f"export const DEFAULT_CLOSE_ACTION = {json.dumps(str(DEFAULT_ACTION))};",
        "/** The clients of a restarting relay (1012) spread their reconnects over this long. */",
        f"export const RESTART_SPREAD_MS = {RESTART_SPREAD_MS};",
        "",
        f"export const OP = {_names(Op)};",
        f"export const EVENT = {_names(EventType)};",
        f"export const ERROR_CODE = {_names(ErrorCode)};",
        f"export const FAILURE_CATEGORY = {_names(FailureCategory)};",
        f"export const FINISH_REASON = {_names(FinishReason)};",
        f"export const TERM_EXIT_REASON = {_names(TermExitReason)};",
        "",
        "/** Defaults of the limits the relay enforces (an operator may set others). */",
        "export const LIMITS = "
        + _object(
            {
                "maxMessageChars": limits.MAX_MESSAGE_CHARS,
                "wsMaxFrameBytes": limits.WS_MAX_FRAME_BYTES,
                "maxJsonDepth": MAX_JSON_DEPTH,
                "termInputMaxBytes": limits.TERM_INPUT_MAX_BYTES,
                "termMinSize": limits.TERM_MIN_SIZE,
                "termMaxSize": limits.TERM_MAX_SIZE,
            }
        )
        + ";",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(
                f"{TARGET} is out of date: python -m relayline.protocol.jsmodule", file=sys.stderr
            )
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
