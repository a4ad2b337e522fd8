"""relayline: a self-hosted, hardened real-time relay between chat front ends and AI agents."""

from __future__ import annotations

__version__ = "0.1.0"
