"""terminado (Jupyter's PTY-over-WebSocket server, on tornado) for bench/terminal.py: one
terminal per WebSocket, running bench/term_programs.py, on 127.0.0.1.

    python bench/terminado_server.py --port 8201 --flood-mib 32 [--lines colour]

``/flood`` runs ``term_programs.py flood MIB LINES`` and ``/echo`` runs
``term_programs.py echo``, each a fresh process per connection (terminado's
UniqueTermManager); ``/health`` answers 200.
terminado's wire format: JSON arrays, ``["stdin", text]`` and ``["set_size", rows, cols]`` in,
``["setup", {}]``, ``["stdout", text]`` and ``["disconnect", 1]`` out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import tornado.web
from terminado import TermSocket, UniqueTermManager  # type: ignore[import-untyped]

PROGRAMS = Path(__file__).resolve().parent / "term_programs.py"


class Health(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"status": "ok"})


async def serve(port: int, flood_mib: float, lines: str) -> None:
    flood = UniqueTermManager(
        shell_command=[sys.executable, str(PROGRAMS), "flood", str(flood_mib), lines]
    )
    echo = UniqueTermManager(shell_command=[sys.executable, str(PROGRAMS), "echo"])
    app = tornado.web.Application(
        [
            (r"/flood", TermSocket, {"term_manager": flood}),
            (r"/echo", TermSocket, {"term_manager": echo}),
            (r"/health", Health),
        ],
        websocket_max_message_size=1 << 20,
    )
    app.listen(port, address="127.0.0.1")
    try:
        await asyncio.Event().wait()
    finally:
        await flood.shutdown()
        await echo.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--flood-mib", type=float, default=32)
    parser.add_argument("--lines", choices=("plain", "colour"), default="plain")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.flood_mib, args.lines))


if __name__ == "__main__":
    main()
