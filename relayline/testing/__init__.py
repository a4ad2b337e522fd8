"""Helpers for testing relayline and applications built on it."""

from __future__ import annotations

from relayline.testing.harness import OpError, WsHarness
from relayline.testing.server import RelayServer, free_port

__all__ = ["OpError", "RelayServer", "WsHarness", "free_port"]
