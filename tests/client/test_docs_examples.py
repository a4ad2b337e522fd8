"""The Python examples of docs/clients.md run as written, against a relay with a worker (the
last one with the official ``openai`` package, against the OpenAI-compatible gateway)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import relayline
from tests.fixtures import RelayFactory, Tenants, Workers, local_answer

ROOT = Path(relayline.__file__).resolve().parents[1]
DOC = ROOT / "docs" / "clients.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


async def run_example(code: str, url: str, token: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "RELAYLINE_URL": url,
        "RELAYLINE_TOKEN": token,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_the_python_examples_run(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    stream, follow, approvals, openai_example = python_blocks()

    out = await run_example(stream, relay.url, tenant.key)
    assert out.strip() == local_answer(("user", "Hello! What can you do?")).strip()

    out = await run_example(follow, relay.url, tenant.key)
    lines = out.splitlines()
    assert lines[0].endswith(" message.created"), out
    assert lines[-1].endswith(" message.completed"), out

    compile(approvals, "docs/clients.md", "exec")  # needs a person to answer: compiled only

    # The OpenAI-compatible gateway, through the official client.
    out = await run_example(openai_example, relay.url, tenant.key)
    models, *answer, usage = out.splitlines()
    assert models == "['local']", out
    assert "\n".join(answer).strip() == local_answer(("user", "Hello")).strip()
    assert usage.endswith(" tokens"), out
