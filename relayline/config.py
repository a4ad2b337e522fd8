"""Settings: every ``RELAYLINE_*`` variable, validated once at start-up.

``load_settings()`` is the only entry point; it raises :class:`ConfigError` with a message that
names the offending variable, and the CLI turns that into one fatal log line and exit code 2.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relayline.protocol import limits

DEV_ADMIN_KEY = "dev-admin-key-change-me-before-production"
DEV_SECRET_KEY = "dev-secret-key-change-me-before-production"  # noqa: S105
MIN_SECRET_LEN = 32
_NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "fuse.sshfs",
    "9p",
    "afs",
    "ceph",
    "glusterfs",
}


class ConfigError(Exception):
    """A setting is missing, malformed, or refused for the chosen environment."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """All settings; field ``foo_bar`` is read from ``RELAYLINE_FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_prefix="RELAYLINE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["development", "production", "test"] = "development"

    # Store
    database_url: str = "sqlite:///./relayline.db"
    # Connections beyond the pool (overflow) are opened for one use and closed after it: under
    # sustained load each use costs a PostgreSQL backend's start, which slows the relay and the
    # server, which raises the load. So the pool takes the load and overflow is off by default.
    db_pool_size: int = Field(20, ge=1, le=200)
    db_max_overflow: int = Field(0, ge=0, le=200)
    db_pool_timeout_s: float = Field(10.0, gt=0, le=120)
    db_connect_timeout_s: float = Field(5.0, gt=0, le=120)
    sqlite_busy_timeout_ms: int = Field(5000, ge=0, le=120_000)
    auto_migrate: bool = True

    # Shared state for several instances (unset: in-process bus and limits)
    redis_url: str | None = None
    redis_prefix: str = Field("relayline:", min_length=1, max_length=64)

    # Secrets
    admin_key: SecretStr = SecretStr(DEV_ADMIN_KEY)
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)
    metrics_token: SecretStr | None = None
    # Error tracking: events go to this Sentry DSN, redacted as the logs are (off when unset).
    sentry_dsn: SecretStr | None = None
    # Backups (relayline backup): where they go, and how many / how old are kept.
    backup_dir: Path = Path("./backups")
    backup_keep: int = Field(14, ge=1, le=10_000)
    backup_max_age_days: float | None = Field(None, gt=0)
    # The relay takes backups itself: a UTC time of day ("02:30") or an interval ("6h"); unset: off.
    backup_schedule: str | None = None
    # Daily analytics: computed each day at this UTC time ("HH:MM") for the previous day(s),
    # catching up at most this many days after downtime; the answers' metrics are kept this
    # many days once aggregated (0: kept forever).
    analytics_at: str = "00:15"
    analytics_catch_up_days: int = Field(31, ge=1, le=366)
    metrics_retention_days: int = Field(90, ge=0, le=36_500)
    # How long a live WebSocket or SSE stream may outlive its credential (a revoked key, a
    # disabled tenant, an expired session) when the revocation broadcast did not reach it.
    auth_revalidate_s: float = Field(10.0, ge=0.5, le=300)

    # Browser access
    allowed_origins: CsvList = ["http://127.0.0.1:8080", "http://localhost:8080"]
    allow_credentials: bool = True

    # Input limits
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # A request head (and so a WebSocket handshake) must be complete this long after the
    # connection opened, or after the first byte of a later request on a kept-alive one.
    request_head_timeout_s: float = Field(10.0, gt=0, le=300)
    # ... and a request body complete this long after its head.
    request_body_timeout_s: float = Field(60.0, gt=0, le=3600)
    max_message_chars: int = Field(limits.MAX_MESSAGE_CHARS, ge=1, le=1_000_000)
    max_title_chars: int = Field(200, ge=1, le=1000)  # the column's width
    max_page_size: int = Field(200, ge=1, le=1000)
    max_session_chats: int = Field(50, ge=1, le=1000)
    session_ttl_s: int = Field(3600, ge=30, le=7 * 86400)
    max_session_ttl_s: int = Field(86_400, ge=30, le=30 * 86400)
    max_publish_events: int = Field(1000, ge=1, le=10_000)

    # Rate limits (``limits`` notation, e.g. "100/minute;10/second")
    rate_limit_storage_url: str | None = None
    rate_limit_ip: str = "600/minute;60/second"
    rate_limit_identity: str = "1200/minute;100/second"
    rate_limit_chat: str = "60/minute;10/second"
    rate_limit_health: str = "300/minute"
    rate_limit_public_sessions: str = "120/minute;10/second"
    ipv6_prefix: int = Field(64, ge=16, le=128)
    trusted_proxies: CsvList = []

    # Real-time hub
    ws_max_frame_bytes: int = Field(limits.WS_MAX_FRAME_BYTES, ge=1024, le=16 * 1024 * 1024)
    ws_max_subscriptions: int = Field(100, ge=1, le=10_000)
    ws_auth_timeout_s: float = Field(5.0, gt=0, le=60)
    ws_queue_max_bytes: int = Field(1024 * 1024, ge=4096)
    ws_queue_max_events: int = Field(5000, ge=10)
    ws_slow_policy: Literal["close", "drop"] = "close"
    ws_write_high_water: int = Field(64 * 1024, ge=1024)
    ws_send_buffer: int = Field(0, ge=0, description="SO_SNDBUF per socket; 0 keeps the OS default")
    ws_op_rate: float = Field(20.0, gt=0)
    ws_op_burst: int = Field(40, ge=1)
    ws_op_violations: int = Field(20, ge=1)
    max_ws_per_identity: int = Field(50, ge=1)
    max_ws_per_ip: int = Field(200, ge=1)
    heartbeat_interval_s: float = Field(20.0, gt=0)
    heartbeat_timeout_s: float = Field(60.0, gt=0)
    replay_max_events: int = Field(1000, ge=1)
    history_max_events: int = Field(2000, ge=1)
    history_max_age_s: float = Field(3600.0, gt=0)
    shutdown_drain_s: float = Field(5.0, ge=0, le=120)

    # Workers and turns
    worker_keys: CsvList = []
    worker_auth: Literal["hmac", "token", "both"] = "hmac"
    worker_signature_window_s: int = Field(300, ge=10, le=3600)
    turn_lease_s: float = Field(30.0, gt=0, le=3600)
    turn_max_attempts: int = Field(3, ge=1, le=20)
    turn_deadline_s: float = Field(600.0, gt=0, le=86_400)
    turn_history_messages: int = Field(50, ge=1, le=10_000)
    turn_history_chars: int = Field(32_000, ge=100, le=10_000_000)
    # Failed answers (cut by a timeout, a dead upstream, a lost worker) go back to the model too.
    turn_history_failed: bool = False
    delta_coalesce_ms: int = Field(40, ge=0, le=5000)
    delta_coalesce_chars: int = Field(1024, ge=1, le=1_000_000)
    approval_timeout_s: float = Field(120.0, gt=0, le=86_400)
    max_worker_capacity: int = Field(64, ge=1, le=10_000)
    max_answer_chars: int = Field(200_000, ge=1_000, le=10_000_000)

    # The OpenAI-compatible gateway (/v1/chat/completions): completions one tenant may have in
    # progress at once, over every instance (more: 429 too_many_completions).
    max_concurrent_completions: int = Field(32, ge=1, le=100_000)
    # Messages one completion request may carry.
    completion_max_messages: int = Field(1000, ge=1, le=100_000)

    # Terminal sessions (on workers started with --terminals)
    terminal_max_per_tenant: int = Field(10, ge=1, le=10_000)
    terminal_open_timeout_s: float = Field(10.0, gt=0, le=120)
    # term.input and term.resize have a budget of their own per connection (typing is many
    # small ops); refusals count towards RELAYLINE_WS_OP_VIOLATIONS like any other op's.
    terminal_input_rate: float = Field(100.0, gt=0)
    terminal_input_burst: int = Field(200, ge=1)
    # A session whose worker is gone is kept this long (plus a margin) for the worker to come
    # back with it, then reported ended (lost); an ended session stays listed this long.
    terminal_detach_grace_s: float = Field(60.0, ge=0)
    terminal_keep_ended_s: float = Field(600.0, ge=0)

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_file: Path | None = None
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    log_backups: int = Field(5, ge=0, le=100)
    log_queue_size: int = Field(10_000, ge=10, le=1_000_000)
    log_chat_events: bool = False

    # Instances (used to warn when per-process backends are shared by several instances)
    instances: int = Field(1, ge=1, le=1000)

    # Public chat widget (relayline/api/routes/public.py). A tenant mints an access code; a
    # visitor trades it (after a proof-of-work when the challenge is on) for a session token
    # scoped to one new chat of their own.
    public_challenge: Literal["on", "off"] = "off"
    public_challenge_bits: int = Field(16, ge=1, le=32)  # leading zero bits of sha256
    public_challenge_ttl_s: int = Field(120, ge=10, le=3600)
    public_session_ttl_s: int = Field(3600, ge=60, le=7 * 86400)
    public_code_max_ttl_s: int = Field(365 * 86400, ge=60, le=5 * 365 * 86400)

    @field_validator("allowed_origins", "trusted_proxies", "worker_keys", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("worker_keys")
    @classmethod
    def _worker_keys(cls, value: list[str]) -> list[str]:
        for item in value:
            key_id, sep, secret = item.partition(":")
            if not sep or not key_id or len(secret) < 16:
                raise ValueError("each entry is id:secret with a secret of at least 16 characters")
        return value

    @property
    def worker_key_map(self) -> dict[str, str]:
        return {k: v for k, _, v in (item.partition(":") for item in self.worker_keys)}

    @field_validator(
        "rate_limit_ip",
        "rate_limit_identity",
        "rate_limit_chat",
        "rate_limit_health",
        "rate_limit_public_sessions",
    )
    @classmethod
    def _rate(cls, value: str) -> str:
        try:
            from limits import parse_many
        except ImportError:  # a worker-only install: the relay's rate limits do not apply there
            return value
        parse_many(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None  # set but empty: unset
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        return value

    @field_validator("backup_schedule")
    @classmethod
    def _backup_schedule(cls, value: str | None) -> str | None:
        if not value:
            return None
        parse_schedule(value)
        return value

    @field_validator("analytics_at")
    @classmethod
    def _analytics_at(cls, value: str) -> str:
        if parse_schedule(value).daily_at is None:
            raise ValueError('a UTC time of day ("00:15")')
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if not value.startswith(
            ("sqlite:", "sqlite+aiosqlite:", "postgresql:", "postgres:", "postgresql+asyncpg:")
        ):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @model_validator(mode="after")
    def _pool(self) -> Settings:
        if self.session_ttl_s > self.max_session_ttl_s:
            raise ValueError("RELAYLINE_SESSION_TTL_S exceeds RELAYLINE_MAX_SESSION_TTL_S")
        return self

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def limits_storage_url(self) -> str:
        if self.rate_limit_storage_url:
            return self.rate_limit_storage_url
        if self.redis_url:
            return (
                "async+" + self.redis_url
                if not self.redis_url.startswith("async+")
                else self.redis_url
            )
        return "memory://"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for an in-memory database."""
    _, _, rest = url.partition(":///")
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


def _on_network_fs(path: Path) -> bool:
    raw = str(path)
    if raw.startswith(("//", "\\\\")):
        return True
    try:
        resolved = str(path.resolve())
        with open("/proc/mounts", encoding="utf-8") as fh:
            mounts = [line.split()[:3] for line in fh if line.strip()]
    except OSError:
        return False
    best, fstype = "", ""
    for _dev, mountpoint, kind in mounts:
        if (resolved == mountpoint or resolved.startswith(mountpoint.rstrip("/") + "/")) and len(
            mountpoint
        ) > len(best):
            best, fstype = mountpoint, kind
    return fstype in _NETWORK_FS


def check_settings(settings: Settings) -> list[str]:
    """Refuse unsafe production settings; return warnings for risky but legal ones."""
    warnings: list[str] = []
    secrets = {
        "RELAYLINE_ADMIN_KEY": (settings.admin_key, DEV_ADMIN_KEY),
        "RELAYLINE_SECRET_KEY": (settings.secret_key, DEV_SECRET_KEY),
    }
    for name, (secret, default) in secrets.items():
        value = secret.get_secret_value()
        if settings.is_production and (value == default or len(value) < MIN_SECRET_LEN):
            raise ConfigError(
                f"{name}: a default or short secret (< {MIN_SECRET_LEN} chars) "
                "is refused in production"
            )
        if not settings.is_production and value == default:
            warnings.append(f"{name} uses the built-in development value")
    if (
        settings.metrics_token is not None
        and settings.is_production
        and len(settings.metrics_token.get_secret_value()) < MIN_SECRET_LEN
    ):
        raise ConfigError(
            f"RELAYLINE_METRICS_TOKEN: shorter than {MIN_SECRET_LEN} chars in production"
        )
    if "*" in settings.allowed_origins:
        if settings.is_production and settings.allow_credentials:
            raise ConfigError(
                "RELAYLINE_ALLOWED_ORIGINS: '*' is refused in production while credentials are used"
            )
        warnings.append("RELAYLINE_ALLOWED_ORIGINS contains '*': any site may open a connection")
    if settings.uses_sqlite:
        path = sqlite_path(settings.database_url)
        if path is not None and _on_network_fs(path):
            if settings.is_production:
                raise ConfigError(
                    "RELAYLINE_DATABASE_URL: SQLite on a network file system "
                    "is refused in production"
                )
            warnings.append(
                "RELAYLINE_DATABASE_URL: SQLite on a network file system may corrupt data"
            )
        if settings.instances > 1:
            warnings.append("RELAYLINE_DATABASE_URL: SQLite cannot be shared by several instances")
        elif settings.redis_url:
            warnings.append(
                "RELAYLINE_REDIS_URL is set but the store is SQLite: chats and the turn queue "
                "stay on this machine; use PostgreSQL to run several instances"
            )
    if settings.instances > 1 and not settings.redis_url:
        warnings.append(
            "RELAYLINE_REDIS_URL is unset: bus, limits and caps stay per process "
            "although RELAYLINE_INSTANCES > 1"
        )
    shared = settings.instances > 1 or settings.redis_url
    if shared and settings.limits_storage_url.startswith("memory"):
        warnings.append(
            "RELAYLINE_RATE_LIMIT_STORAGE_URL is memory://: rate limits stay per process "
            "while other state is shared"
        )
    for net in settings.trusted_proxies:
        if ipaddress.ip_network(net, strict=False).prefixlen == 0:
            warnings.append(
                "RELAYLINE_TRUSTED_PROXIES trusts every address: X-Forwarded-For can be forged"
            )
    if settings.is_production and settings.log_chat_events:
        warnings.append("RELAYLINE_LOG_CHAT_EVENTS is on: message content is written to the logs")
    return warnings


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        loc = [str(p) for p in item.get("loc", ()) if p != "__root__"]
        name = "RELAYLINE_" + loc[0].upper() if loc else "settings"
        parts.append(f"{name}: {item.get('msg', 'invalid value')}")
    return "; ".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings, raising :class:`ConfigError` naming the variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # malformed values that never reach a field validator
        raise ConfigError(str(exc)) from None
    check_settings(settings)
    return settings


# Schedules (RELAYLINE_BACKUP_SCHEDULE)

_DAILY = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_EVERY = re.compile(r"^(\d{1,5})([mh])$")


@dataclass(frozen=True, slots=True)
class Schedule:
    daily_at: tuple[int, int] | None = None  # (hour, minute) UTC
    every_s: float | None = None

    def last_due(self, now: float) -> float | None:
        """For a daily schedule: the latest scheduled moment at or before ``now``."""
        if self.daily_at is None:
            return None
        hour, minute = self.daily_at
        today = datetime.fromtimestamp(now, UTC).replace(
            hour=hour, minute=minute, second=0, microsecond=0
        )
        moment = today if today.timestamp() <= now else today - timedelta(days=1)
        return moment.timestamp()

    def due(self, last_finished: float, now: float) -> bool:
        """Whether a backup is due, the last one having finished at ``last_finished`` (0: none)."""
        if self.every_s is not None:
            return now - last_finished >= self.every_s
        boundary = self.last_due(now)
        return boundary is not None and last_finished < boundary


def parse_schedule(value: str) -> Schedule:
    """``"HH:MM"`` (daily, UTC) or ``"<n>m"`` / ``"<n>h"`` (an interval of at least 5 minutes);
    ValueError otherwise."""
    text = value.strip()
    daily = _DAILY.match(text)
    if daily:
        return Schedule(daily_at=(int(daily.group(1)), int(daily.group(2))))
    every = _EVERY.match(text)
    if every:
        seconds = int(every.group(1)) * (60 if every.group(2) == "m" else 3600)
        if seconds < 300:
            raise ValueError("a backup interval is at least 5m")
        return Schedule(every_s=float(seconds))
    raise ValueError('a UTC time of day ("02:30") or an interval ("6h", "90m")')
