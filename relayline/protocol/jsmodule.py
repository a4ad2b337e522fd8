"""The JavaScript client's copy of the protocol's catalogues, generated from this package:
``protocol.js`` and its type declarations ``protocol.d.ts`` in ``relayline/web/static/sdk/``
(the JS SDK, which the web UI uses too).

    python -m relayline.protocol.jsmodule           # rewrite both files
    python -m relayline.protocol.jsmodule --check   # exit 1 when either is out of date

``tests/test_protocol_catalogue.py`` fails when a checked-in file differs from what this renders.
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

SDK = Path(__file__).resolve().parents[1] / "web" / "static" / "sdk"
TARGET = SDK / "protocol.js"
TYPES_TARGET = SDK / "protocol.d.ts"


def _object(values: Mapping[str, object]) -> str:
    body = "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in values.items())
    return "Object.freeze({\n" + body + "})"


def _names(enum: type[Enum]) -> str:
    return _object({member.name: member.value for member in enum})


def _actions() -> dict[str, str]:
    return {str(int(code)): str(action) for code, action in ACTIONS.items()}


def _limits() -> dict[str, int]:
    return {
        "maxMessageChars": limits.MAX_MESSAGE_CHARS,
        "wsMaxFrameBytes": limits.WS_MAX_FRAME_BYTES,
        "maxJsonDepth": MAX_JSON_DEPTH,
        "termInputMaxBytes": limits.TERM_INPUT_MAX_BYTES,
        "termMinSize": limits.TERM_MIN_SIZE,
        "termMaxSize": limits.TERM_MAX_SIZE,
    }


_ENUMS: dict[str, type[Enum]] = {
    "OP": Op,
    "EVENT": EventType,
    "ERROR_CODE": ErrorCode,
    "FAILURE_CATEGORY": FailureCategory,
    "FINISH_REASON": FinishReason,
    "TERM_EXIT_REASON": TermExitReason,
}


def _type(values: Mapping[str, object]) -> str:
    body = "".join(f"  {json.dumps(k)}: {json.dumps(v)};\n" for k, v in values.items())
    return "Readonly<{\n" + body + "}>"


def render_types() -> str:
    """``protocol.d.ts``: the same catalogues as literal types."""
    parts = [
        "// Generated from relayline/protocol by `python -m relayline.protocol.jsmodule`.",
        "// Do not edit: change the Python catalogue and regenerate.",
        "",
        f"export declare const CLOSE: {_type({m.name: m.value for m in Close})};",
        f"export declare const CLOSE_ACTIONS: {_type(_actions())};",
        f"export declare const DEFAULT_CLOSE_ACTION: {json.dumps(str(DEFAULT_ACTION))};",
        f"export declare const RESTART_SPREAD_MS: {RESTART_SPREAD_MS};",
        *(
            f"export declare const {name}: {_type({m.name: m.value for m in enum})};"
            for name, enum in _ENUMS.items()
        ),
        f"export declare const LIMITS: {_type(_limits())};",
        "",
    ]
    return "\n".join(parts)


def render() -> str:
    actions = _actions()
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
        *(f"export const {name} = {_names(enum)};" for name, enum in _ENUMS.items()),
        "",
        "/** Defaults of the limits the relay enforces (an operator may set others). */",
        f"export const LIMITS = {_object(_limits())};",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    files = {TARGET: render(), TYPES_TARGET: render_types()}
    if args.check:
        stale = [
            path
            for path, text in files.items()
            if not path.exists() or path.read_text(encoding="utf-8") != text
        ]
        for path in stale:
            print(f"{path} is out of date: python -m relayline.protocol.jsmodule", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
