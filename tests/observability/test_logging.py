"""The logging pipeline end to end: real output from structlog and stdlib loggers, read back."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY

from relayline.config import ConfigError, Settings
from relayline.observability.logging import LogRuntime, configure_logging, get_logger

ADMIN_KEY = "adm-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
BEARER_TOKEN = "abcDEF123456ghiJKL789xyz"
TENANT_KEY = "rl_Z3Vlc3NhYmxlLXRlbmFudC1rZXk"
QUERY_TOKEN = "s3cretQueryToken"
DB_PASSWORD = "dbPassw0rd-42"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJ1c2VyLTEiLCJ0ZW5hbnQiOiJhY21lIiwiZXhwIjoxNzAwMDAwMDAwfQ"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
)
SECRETS = (ADMIN_KEY, BEARER_TOKEN, TENANT_KEY, QUERY_TOKEN, DB_PASSWORD, JWT)
DROPPED_METRIC = "relayline_log_records_dropped_total"
# Loggers the pipeline reconfigures; the fixture puts them back as they were.
TOUCHED_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.asgi",
    "uvicorn.access",
    "aiosqlite",
    "websockets",
    "httpcore",
    "hpack",
)

Configure = Callable[..., tuple[LogRuntime, Callable[[], str]]]


def log_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"env": "test", "log_format": "json"}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the process-wide logging state back: other tests share this interpreter."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
        for name in TOUCHED_LOGGERS
        for logger in [logging.getLogger(name)]
    }
    logger_class = logging.getLoggerClass()
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    logging.setLoggerClass(logger_class)
    root.handlers[:] = saved_root[0]
    root.setLevel(saved_root[1])
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


@pytest.fixture
def configure(tmp_path: Path) -> Iterator[Configure]:
    """Configure logging into a StringIO (or a file); returns the runtime and a reader.

    The reader closes the runtime first, so everything queued has been written.
    """
    runtimes: list[LogRuntime] = []

    def make(**overrides: Any) -> tuple[LogRuntime, Callable[[], str]]:
        settings = log_settings(**overrides)
        stream = io.StringIO()
        runtime = configure_logging(settings, stream=stream)
        runtimes.append(runtime)

        def read() -> str:
            runtime.close()
            if settings.log_file is not None:
                return settings.log_file.read_text(encoding="utf-8")
            return stream.getvalue()

        return runtime, read

    yield make
    for runtime in runtimes:
        runtime.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def dropped_metric() -> float:
    return REGISTRY.get_sample_value(DROPPED_METRIC) or 0.0


def test_json_lines_parse_and_carry_timestamp_level_and_logger(
    configure: Configure, tmp_path: Path
) -> None:
    _, read = configure(log_file=tmp_path / "relay.log")
    get_logger("relayline.chat").info("chat.created", chat_id="c1", size=3)
    logging.getLogger("sqlalchemy.pool").warning("pool %s exhausted", "main")

    first, second = json_lines(read())
    assert first["event"] == "chat.created"
    assert first["chat_id"] == "c1"
    assert first["size"] == 3
    assert first["level"] == "info"
    assert first["logger"] == "relayline.chat"
    assert first["timestamp"].endswith("Z")  # ISO 8601, UTC
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]
    assert second["event"] == "pool main exhausted"
    assert second["level"] == "warning"
    assert second["logger"] == "sqlalchemy.pool"


@pytest.mark.parametrize(
    ("env", "log_format", "is_json"),
    [
        ("production", "auto", True),
        ("development", "auto", False),
        ("production", "console", False),
        ("development", "json", True),
    ],
)
def test_format_follows_settings(
    configure: Configure, env: str, log_format: str, is_json: bool
) -> None:
    _, read = configure(env=env, log_format=log_format)
    get_logger("relayline.test").info("chat.created", chat_id="c1")

    text = read()
    assert "chat.created" in text
    if is_json:
        assert json_lines(text)[0]["chat_id"] == "c1"
    else:
        assert "chat_id=c1" in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text.splitlines()[0])


def log_every_secret_shape() -> None:
    log = get_logger("relayline.test")
    log.info("admin.call", config={"admin_key": ADMIN_KEY, "nested": [{"password": DB_PASSWORD}]})
    log.info(f"upstream said Authorization: Bearer {BEARER_TOKEN}")
    log.info(
        "ws.accept",
        headers=[
            (b"authorization", f"Bearer {BEARER_TOKEN}".encode()),
            (b"sec-websocket-protocol", f"relayline.v1, bearer.{JWT}".encode()),
        ],
    )
    log.info(f"tenant key {TENANT_KEY} used from 10.0.0.1")
    log.info("fetch", url=f"https://api.example.com/v1/items?token={QUERY_TOKEN}&x=1")
    log.info("session.issued", session=JWT, note=f"protocols: bearer.{JWT}")
    log.info("db.connect", dsn=f"postgresql://relay:{DB_PASSWORD}@db:5432/relay")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_secrets_never_reach_the_output(configure: Configure, log_format: str) -> None:
    _, read = configure(log_format=log_format)
    log_every_secret_shape()

    text = read()
    for secret in SECRETS:
        assert secret not in text
    assert "Bearer [redacted]" in text
    assert "rl_[redacted]" in text
    assert "token=[redacted]&x=1" in text
    assert "[redacted-jwt]" in text
    assert "relay:[redacted]@db" in text


def test_stdlib_records_are_redacted_too(configure: Configure) -> None:
    _, read = configure()
    logging.getLogger("uvicorn.error").info(
        "ASGI scope header Authorization: Bearer %s", BEARER_TOKEN
    )
    logging.getLogger("sqlalchemy.engine").warning(
        "connect failed for postgresql://relay:%s@db/relay", DB_PASSWORD
    )
    logging.getLogger("httpx").info("request", extra={"api_key": ADMIN_KEY, "ok": True})
    try:
        raise RuntimeError(f"upstream refused key {TENANT_KEY}")
    except RuntimeError:
        logging.getLogger("relayline.worker").exception("call failed")

    text = read()
    for secret in SECRETS:
        assert secret not in text
    lines = json_lines(text)
    assert [line["logger"] for line in lines] == [
        "uvicorn.error",
        "sqlalchemy.engine",
        "httpx",
        "relayline.worker",
    ]
    assert lines[2]["api_key"] == "[redacted]"
    assert lines[2]["ok"] is True
    assert "RuntimeError: upstream refused key rl_[redacted]" in lines[3]["exception"]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_structlog_tracebacks_are_formatted_then_redacted(
    configure: Configure, log_format: str
) -> None:
    _, read = configure(log_format=log_format)
    try:
        raise ValueError(f"bad session {JWT} for token={QUERY_TOKEN}")
    except ValueError:
        get_logger("relayline.test").exception("turn.failed")

    text = read()
    assert "Traceback (most recent call last)" in text
    assert "ValueError: bad session [redacted-jwt] for token=[redacted]" in text
    assert JWT not in text
    assert QUERY_TOKEN not in text


def test_bound_request_id_lands_on_every_line_of_the_request(configure: Configure) -> None:
    _, read = configure()
    structlog.contextvars.bind_contextvars(request_id="req-0123456789")
    get_logger("relayline.api").info("request.start")
    logging.getLogger("uvicorn.error").warning("slow client")
    structlog.contextvars.clear_contextvars()
    get_logger("relayline.api").info("between.requests")

    first, second, third = json_lines(read())
    assert first["request_id"] == "req-0123456789"
    assert second["request_id"] == "req-0123456789"
    assert "request_id" not in third


async def test_request_ids_do_not_leak_between_concurrent_tasks(configure: Configure) -> None:
    _, read = configure()

    async def handle(request_id: str) -> None:
        structlog.contextvars.bind_contextvars(request_id=request_id)
        await asyncio.sleep(0)  # interleave the two tasks
        get_logger("relayline.api").info("request.done", expect=request_id)

    await asyncio.gather(handle("req-aaaaaaaa"), handle("req-bbbbbbbb"))

    lines = json_lines(read())
    assert len(lines) == 2
    assert all(line["request_id"] == line["expect"] for line in lines)


@pytest.mark.parametrize("log_chat_events", [False, True])
def test_chat_content_is_omitted_unless_enabled(
    configure: Configure, log_chat_events: bool
) -> None:
    _, read = configure(log_chat_events=log_chat_events)
    get_logger("relayline.hub").info(
        "message.created",
        content="my medical history",
        prompt="summarise my medical history",
        frame={"type": "delta", "delta": "partial answer"},
        messages=3,  # a count carries no content
    )

    (line,) = json_lines(read())
    assert line["messages"] == 3
    if log_chat_events:
        assert line["content"] == "my medical history"
        assert line["frame"]["delta"] == "partial answer"
    else:
        assert "medical" not in json.dumps(line)
        assert "partial answer" not in json.dumps(line)
        assert line["content"] == line["prompt"] == "[content omitted]"
        assert line["frame"] == {"type": "delta", "delta": "[content omitted]"}


class StuckStream(io.StringIO):
    """A stream whose first write hangs until released: a writer stuck on a slow disk."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(10)
        return super().write(text)


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    stream = StuckStream()
    runtime = configure_logging(log_settings(log_queue_size=10), stream=stream)
    try:
        before = dropped_metric()
        log = get_logger("relayline.test")
        log.info("first")
        assert stream.entered.wait(5)  # the writer holds "first"; the queue is empty

        started = time.monotonic()
        for index in range(60):
            log.info("burst", index=index)
        elapsed = time.monotonic() - started

        assert elapsed < 2.0  # never waited for the stuck writer
        assert runtime.dropped == 50  # 10 fit in the queue
        assert dropped_metric() - before == 50
    finally:
        stream.release.set()
        runtime.close()
    lines = json_lines(stream.getvalue())
    assert [line["event"] for line in lines] == ["first"] + ["burst"] * 10
    assert [line["index"] for line in lines[1:]] == list(range(10))


def test_unrenderable_record_is_counted_without_echoing_it(
    configure: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    runtime, read = configure()
    get_logger("relayline.test").info(f"about {TENANT_KEY}", thing=Unprintable())

    assert runtime.dropped == 1
    assert read() == ""
    err = capsys.readouterr().err
    assert "dropped a log record from 'relayline.test'" in err
    assert TENANT_KEY not in err


@pytest.mark.parametrize("backups", [0, 2])
def test_rotation_keeps_at_most_log_backups(
    configure: Configure, tmp_path: Path, backups: int
) -> None:
    log_file = tmp_path / "logs" / "relay.log"  # the directory is created
    _, read = configure(log_file=log_file, log_max_bytes=1024, log_backups=backups)
    log = get_logger("relayline.test")
    for index in range(100):
        log.info("filler", index=index, padding="x" * 100)
    read()

    files = sorted(path.name for path in log_file.parent.iterdir())
    assert files == ["relay.log"] + [f"relay.log.{n}" for n in range(1, backups + 1)]
    for path in log_file.parent.iterdir():
        assert path.stat().st_size <= 1024
        json_lines(path.read_text(encoding="utf-8"))  # rotation never splits a line
    # The newest lines survive in the current file.
    assert json_lines(log_file.read_text(encoding="utf-8"))[-1]["index"] == 99


def test_unopenable_log_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="RELAYLINE_LOG_FILE"):
        configure_logging(log_settings(log_file=blocker / "relay.log"))


def test_uvicorn_loggers_are_adopted_and_access_log_silenced(configure: Configure) -> None:
    # What uvicorn's own logging config leaves behind.
    own_handler = logging.StreamHandler(io.StringIO())
    logging.getLogger("uvicorn.error").addHandler(own_handler)
    logging.getLogger("uvicorn").propagate = False

    _, read = configure()
    logging.getLogger("uvicorn.error").info(
        "Application startup complete.", extra={"color_message": "\x1b[1mApplication\x1b[0m"}
    )
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /healthz HTTP/1.1" 200')

    assert own_handler not in logging.getLogger("uvicorn.error").handlers
    (line,) = json_lines(read())
    assert line["logger"] == "uvicorn.error"
    assert line["event"] == "Application startup complete."
    assert "color_message" not in line


def test_level_comes_from_settings(configure: Configure) -> None:
    _, read = configure(log_level="WARNING")
    get_logger("relayline.test").info("quiet")
    get_logger("relayline.test").warning("loud")
    logging.getLogger("sqlalchemy").info("quiet too")

    assert [line["event"] for line in json_lines(read())] == ["loud"]


def test_get_logger_defaults_to_the_calling_module(configure: Configure) -> None:
    _, read = configure()
    get_logger().info("named")

    (line,) = json_lines(read())
    assert line["logger"] == __name__


def test_close_is_idempotent_and_later_records_stay_redacted(configure: Configure) -> None:
    runtime, read = configure()
    get_logger("relayline.test").info("before")
    first = read()
    runtime.close()
    runtime.close()
    get_logger("relayline.test").info(f"after close {TENANT_KEY}")

    assert runtime.dropped == 0
    events = [line["event"] for line in json_lines(read())]
    assert events == ["before", "after close rl_[redacted]"]
    assert json_lines(first)[0]["event"] == "before"
    assert not any(t.name == "relayline-log-writer" for t in threading.enumerate())


def test_reconfiguring_replaces_the_previous_pipeline(configure: Configure) -> None:
    old, read_old = configure()
    new, read_new = configure()
    get_logger("relayline.test").info("to the new one")

    assert len(logging.getLogger().handlers) == 1
    assert json_lines(read_new())[0]["event"] == "to the new one"
    assert json_lines(read_old()) == []
    assert old is not new
