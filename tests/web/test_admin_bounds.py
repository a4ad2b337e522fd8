"""The admin console's copy of the generation bounds is the relay's: a form that allowed less
would refuse values the relay takes, one that allowed more would only learn of it from a 422."""

from __future__ import annotations

import re
from typing import Any

from relayline.api.routes.web import STATIC_ROOT
from relayline.protocol.generation import MAX_STOP_CHARS, MAX_STOP_SEQUENCES, Generation


def _bound(field: str, kind: str) -> Any:
    for item in Generation.model_fields[field].metadata:
        if hasattr(item, kind):
            return getattr(item, kind)
    raise AssertionError(f"{field} has no {kind} bound")


def test_the_console_bounds_are_the_relays() -> None:
    source = (STATIC_ROOT / "js" / "agent_settings.js").read_text()

    def bounds(name: str) -> dict[str, float]:
        m = re.search(rf"{name}: Object\.freeze\(\{{([^}}]*)\}}\)", source)
        assert m, name
        return {k: float(v) for k, v in re.findall(r"(\w+): ([\d.]+)", m.group(1))}

    assert bounds("temperature")["min"] == _bound("temperature", "ge")
    assert bounds("temperature")["max"] == _bound("temperature", "le")
    assert bounds("top_p")["min"] == _bound("top_p", "gt")  # the relay alone refuses 0 itself
    assert bounds("top_p")["max"] == _bound("top_p", "le")
    assert bounds("max_tokens")["min"] == _bound("max_tokens", "ge")
    assert bounds("max_tokens")["max"] == _bound("max_tokens", "le")
    assert bounds("stop") == {"maxItems": MAX_STOP_SEQUENCES, "maxChars": MAX_STOP_CHARS}
