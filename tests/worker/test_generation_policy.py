"""A worker's generation defaults and limits: what the model is finally sent."""

from __future__ import annotations

import pytest

from relayline.protocol.generation import Generation, GenerationPolicy, policy_for
from relayline.worker.settings import WorkerSettings


def test_the_tenants_values_win_over_the_defaults_and_are_held_to_the_limits() -> None:
    policy = GenerationPolicy.model_validate(
        {
            "defaults": {"temperature": 0.7, "top_p": 0.95, "stop": ["###"]},
            "limits": {"temperature": 1.0, "max_tokens": 512},
        }
    )
    asked = Generation(temperature=1.8, max_tokens=4096)
    assert policy.apply(asked).wire() == {
        "temperature": 1.0,
        "top_p": 0.95,
        "max_tokens": 512,
        "stop": ["###"],
    }
    # Within the limits: as asked; nothing asked: the defaults, and the max_tokens limit.
    assert policy.apply(Generation(temperature=0.1, max_tokens=10)).wire()["max_tokens"] == 10
    assert policy.apply(Generation()).wire() == {
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 512,
        "stop": ["###"],
    }


def test_no_policy_sends_only_what_the_tenant_set() -> None:
    assert GenerationPolicy().apply(Generation(top_p=0.5)).wire() == {"top_p": 0.5}
    assert GenerationPolicy().apply(Generation()).wire() == {}


def test_the_models_own_policy_else_the_wildcard() -> None:
    settings = WorkerSettings.model_validate(
        {
            "generation": {
                "*": {"limits": {"max_tokens": 100}},
                "big": {"limits": {"max_tokens": 4000}},
            }
        }
    )
    assert policy_for(settings.generation, "big").limits.max_tokens == 4000
    assert policy_for(settings.generation, "other").limits.max_tokens == 100
    assert policy_for({}, "any") == GenerationPolicy()


def test_the_setting_is_read_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAYLINE_GENERATION", '{"*": {"defaults": {"temperature": 0.3}}}')
    settings = WorkerSettings(_env_file=None)
    assert policy_for(settings.generation, "m").defaults.temperature == 0.3


@pytest.mark.parametrize(
    "value",
    [
        '{"*": {"limits": {"temperature": 9}}}',
        '{"*": {"defaults": {"max_tokens": 0}}}',
        '{"*": {"limit": {}}}',
        "not json",
    ],
)
def test_a_bad_policy_stops_the_worker_at_start(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RELAYLINE_GENERATION", value)
    with pytest.raises(ValueError):
        WorkerSettings(_env_file=None)
