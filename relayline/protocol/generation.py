"""Generation settings: how an answer is sampled, from the tenant's agent settings to the model.

The relay validates what a tenant sets (:class:`Generation`, bounded: 422 on anything else) and
sends only the values that are set, as ``turn.assigned``'s ``generation``. The worker fills in
its own defaults for the model and holds every value inside its limits
(:class:`GenerationPolicy`, from ``RELAYLINE_GENERATION``): a tenant never gets more tokens, a
higher temperature or top_p than the worker allows, and a worker limit on ``max_tokens``
applies even when the tenant set none. What comes out goes to the model server as the OpenAI
request fields of the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_TOKENS = 32_768
MAX_STOP_SEQUENCES = 4  # OpenAI's own limit
MAX_STOP_CHARS = 64

GENERATION_FIELDS = ("temperature", "top_p", "max_tokens", "stop")

StopSequence = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]


class Generation(BaseModel):
    """Sampling settings; ``None`` means "the model server's default" (or the worker's).
    Strict: ``true`` is not a temperature, ``5.0`` not a token count."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    stop: list[StopSequence] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES)

    def wire(self) -> dict[str, Any]:
        """The values that are set, as JSON (``turn.assigned``'s ``generation``, the request)."""
        return self.model_dump(exclude_none=True)

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> Generation:
        """The generation fields of a tenant's agent settings (other keys ignored)."""
        return cls.model_validate({k: settings[k] for k in GENERATION_FIELDS if k in settings})


class GenerationLimits(BaseModel):
    """The most a tenant may ask for; ``None``: no limit beyond :class:`Generation`'s bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)


class GenerationPolicy(BaseModel):
    """A worker's defaults and limits for one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: Generation = Generation()
    limits: GenerationLimits = GenerationLimits()

    def apply(self, asked: Generation) -> Generation:
        """What the model is sent: the tenant's values, else the defaults; then each held to
        its limit (a limit on ``max_tokens`` is sent even when neither set one)."""
        merged = {**self.defaults.wire(), **asked.wire()}
        for name in ("temperature", "top_p", "max_tokens"):
            limit = getattr(self.limits, name)
            if limit is None:
                continue
            value = merged.get(name)
            if value is None:
                if name == "max_tokens":
                    merged[name] = limit
            elif value > limit:
                merged[name] = limit
        return Generation.model_validate(merged)


def policy_for(policies: Mapping[str, GenerationPolicy], model: str) -> GenerationPolicy:
    """The policy of ``model``, else the one under ``"*"``, else none (no defaults, no limits)."""
    return policies.get(model) or policies.get("*") or GenerationPolicy()
