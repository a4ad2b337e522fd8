"""How long a client waits before it connects again, after each kind of close."""

from __future__ import annotations

import random
from dataclasses import dataclass

from relayline.protocol.close_codes import RESTART_SPREAD_MS, ClientAction


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: the n-th failed attempt in a row waits a random
    time in ``[0, min(max_s, base_s * 2**n))``. A relay that restarts (1012) spreads its
    clients over ``restart_spread_s``. The defaults are the web UI's (reconnect.js), so a
    relay sees every kind of client come back the same way."""

    base_s: float = 0.5
    max_s: float = 30.0
    restart_spread_s: float = RESTART_SPREAD_MS / 1000

    def delay(self, action: ClientAction, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (0 = the first after a link that
        worked) after a close whose catalogue action is ``action``."""
        if action == ClientAction.NOW and attempt == 0:
            return 0.0
        if action == ClientAction.JITTERED and attempt == 0:
            return random.uniform(0, self.restart_spread_s)
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))
