"""Settings of the worker daemon (``relayline worker``), from ``RELAYLINE_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relayline.protocol.generation import GenerationPolicy
from relayline.worker.terminals.programs import parse_programs


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAYLINE_", env_file=".env", extra="ignore")

    # One relay, or several separated by commas: after a lost connection the worker tries the
    # next, so a relay instance that dies does not strand it (no load balancer needed).
    relay_url: str = "http://127.0.0.1:8080"
    worker_key_id: str = ""
    worker_secret: SecretStr = SecretStr("")
    worker_token_auth: bool = False  # bearer "<key_id>:<secret>" instead of a signed handshake
    worker_id: str | None = None
    worker_capacity: int = Field(4, ge=1, le=1000)
    llm_url: str | None = None
    llm_api_key: SecretStr | None = None
    model: str = "local"
    # Per model (by name; "*" for any other): defaults for the tenant's generation settings
    # and limits a tenant cannot exceed, e.g.
    # {"*": {"defaults": {"temperature": 0.7}, "limits": {"max_tokens": 1024}}}.
    generation: dict[str, GenerationPolicy] = {}
    local_model_delay_s: float = Field(0.02, ge=0, le=10)
    llm_connect_timeout_s: float = Field(5.0, gt=0)
    llm_read_timeout_s: float = Field(60.0, gt=0)
    llm_total_timeout_s: float = Field(300.0, gt=0)
    llm_max_attempts: int = Field(3, ge=1, le=10)
    llm_retry_total_s: float = Field(20.0, gt=0)
    llm_max_inflight: int = Field(4, ge=1, le=1000)
    # At start, learn the upstream's slots (never more streams than it serves at once) and its
    # tokenizer (counts for answers whose usage it does not report); see upstream_probe.
    llm_probe: bool = True
    breaker_failures: int = Field(5, ge=1)
    breaker_recovery_s: float = Field(30.0, gt=0)
    max_tool_rounds: int = Field(8, ge=0, le=100)
    workspace_roots: Annotated[list[Path], NoDecode] = []
    approval_timeout_s: float = Field(120.0, gt=0)
    reconnect_base_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    state_interval_s: float = Field(5.0, gt=0)
    # WebSocket pings to the relay; no pong within as long again: the link is dead (a NAT that
    # forgot it sends no FIN), so reconnect.
    relay_ping_s: float = Field(20.0, gt=0, le=600)
    # The worker's own /metrics (off unless a port is set); 127.0.0.1 unless told otherwise.
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # Error tracking, as the relay's (RELAYLINE_SENTRY_DSN; off when unset).
    sentry_dsn: SecretStr | None = None
    shutdown_grace_s: float = Field(30.0, ge=0)

    # Terminal agents (`relayline worker --terminals`; off by default): allowlisted programs in
    # PTYs, "name=command line" entries separated by ";" (see terminals.programs).
    terminals: bool = False
    terminal_programs: str = ""
    terminal_max_sessions: int = Field(8, ge=1, le=1000)
    terminal_flush_ms: float = Field(8.0, ge=0, le=1000)
    terminal_flush_bytes: int = Field(32 * 1024, ge=256, le=1024 * 1024)
    terminal_grace_s: float = Field(5.0, ge=0, le=300)
    terminal_idle_s: float = Field(3600.0, ge=0)  # 0: never
    terminal_max_lifetime_s: float = Field(86_400.0, ge=0)  # 0: never
    terminal_detach_grace_s: float = Field(60.0, ge=0)
    terminal_outbox_bytes: int = Field(1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    terminal_resize_debounce_ms: float = Field(50.0, ge=0, le=5000)

    @field_validator("relay_url")
    @classmethod
    def _relay_urls_valid(cls, value: str) -> str:
        urls = [part.strip() for part in value.split(",") if part.strip()]
        if not urls:
            raise ValueError("no relay URL")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
                raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
        return ",".join(urls)

    @property
    def relay_urls(self) -> list[str]:
        """The relays to try, in order (``relay_url`` split at commas)."""
        return self.relay_url.split(",")

    @field_validator("terminal_programs")
    @classmethod
    def _programs(cls, value: str) -> str:
        parse_programs(value)  # ProgramsError (a ValueError) names the entry
        return value

    @property
    def terminal_program_map(self) -> dict[str, tuple[str, ...]]:
        return parse_programs(self.terminal_programs)

    @field_validator("workspace_roots", mode="before")
    @classmethod
    def _roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p.strip()) for p in value.split(",") if p.strip()]
        return value
