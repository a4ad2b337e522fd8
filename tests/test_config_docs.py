"""Every setting is documented in docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

from relayline.config import Settings
from relayline.worker.settings import WorkerSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    names = {
        f"RELAYLINE_{name.upper()}"
        for cls in (Settings, WorkerSettings)
        for name in cls.model_fields
    }
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert not missing, f"undocumented settings: {missing}"
