"""Settings: every bad value is refused naming its variable; risky choices are warned about."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relayline import config
from relayline.config import (
    DEV_ADMIN_KEY,
    ConfigError,
    Settings,
    check_settings,
    load_settings,
    sqlite_path,
)

STRONG = "s" * 40


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RELAYLINE_* from the developer's shell, and no .env from the working directory."""
    for name in list(os.environ):
        if name.upper().startswith("RELAYLINE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def production(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    values = {
        "RELAYLINE_ENV": "production",
        "RELAYLINE_ADMIN_KEY": "a" * 40,
        "RELAYLINE_SECRET_KEY": "b" * 40,
        "RELAYLINE_DATABASE_URL": "postgresql://relay@db.internal/relay",
        "RELAYLINE_ALLOWED_ORIGINS": "https://chat.example.com",
    }
    values.update(env)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def refused(match: str) -> pytest.RaisesExc[ConfigError]:
    return pytest.raises(ConfigError, match=match)


# --- malformed values -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "1.5", "", "10" * 30])
def test_invalid_integer_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RELAYLINE_MAX_BODY_BYTES", value)
    with refused("RELAYLINE_MAX_BODY_BYTES"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAYLINE_MAX_BODY_BYTES", "10"),
        ("RELAYLINE_MAX_PAGE_SIZE", "0"),
        ("RELAYLINE_MAX_TITLE_CHARS", "5000"),
        ("RELAYLINE_IPV6_PREFIX", "129"),
        ("RELAYLINE_DB_CONNECT_TIMEOUT_S", "0"),
        ("RELAYLINE_LOG_LEVEL", "chatty"),
        ("RELAYLINE_ENV", "staging"),
        ("RELAYLINE_AUTO_MIGRATE", "maybe"),
    ],
)
def test_out_of_range_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with refused(name):
        load_settings()


@pytest.mark.parametrize("value", ["lots", "10/fortnight", "ten/minute", "10 per"])
def test_bad_rate_limit_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RELAYLINE_RATE_LIMIT_IP", value)
    with refused("RELAYLINE_RATE_LIMIT_IP"):
        load_settings()


def test_rate_limits_accept_several_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYLINE_RATE_LIMIT_CHAT", "30/minute;5/second")
    assert load_settings().rate_limit_chat == "30/minute;5/second"


@pytest.mark.parametrize("value", ["10.0.0.0/8,not-a-network", "10.0.0.0/33", "300.1.1.1"])
def test_bad_trusted_proxy_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RELAYLINE_TRUSTED_PROXIES", value)
    with refused("RELAYLINE_TRUSTED_PROXIES"):
        load_settings()


def test_trusted_proxies_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYLINE_TRUSTED_PROXIES", " 10.0.0.0/8, 192.168.1.1 ,::1,")
    assert load_settings().trusted_proxies == ["10.0.0.0/8", "192.168.1.1", "::1"]


@pytest.mark.parametrize(
    "url", ["mysql://root@localhost/relay", "relayline.db", "http://db/x", "redis://x"]
)
def test_bad_database_url_scheme_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("RELAYLINE_DATABASE_URL", url)
    with refused("RELAYLINE_DATABASE_URL"):
        load_settings()


@pytest.mark.parametrize(
    "url",
    ["sqlite:///./relay.db", "sqlite+aiosqlite:////tmp/x.db", "postgresql://u@h/db"],
)
def test_supported_database_urls(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("RELAYLINE_DATABASE_URL", url)
    assert load_settings().database_url == url


def test_session_ttl_above_its_maximum_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYLINE_SESSION_TTL_S", "7200")
    monkeypatch.setenv("RELAYLINE_MAX_SESSION_TTL_S", "3600")
    with refused("RELAYLINE_SESSION_TTL_S"):
        load_settings()


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYLINE_MAX_BODY_BYTES", "abc")
    monkeypatch.setenv("RELAYLINE_RATE_LIMIT_IP", "lots")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "RELAYLINE_MAX_BODY_BYTES" in str(caught.value)
    assert "RELAYLINE_RATE_LIMIT_IP" in str(caught.value)


def test_secret_values_are_not_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch, RELAYLINE_ADMIN_KEY="short-but-secret-value")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "RELAYLINE_ADMIN_KEY" in str(caught.value)
    assert "short-but-secret-value" not in str(caught.value)


# --- .env -----------------------------------------------------------------------------------


def test_dotenv_in_the_working_directory_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("RELAYLINE_MAX_PAGE_SIZE=7\nRELAYLINE_MAX_TITLE_CHARS=9\n")
    monkeypatch.setenv("RELAYLINE_MAX_TITLE_CHARS", "11")

    settings = load_settings()

    assert settings.max_page_size == 7
    assert settings.max_title_chars == 11  # the environment wins over the file


def test_bad_value_in_dotenv_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RELAYLINE_MAX_BODY_BYTES=lots\n")
    with refused("RELAYLINE_MAX_BODY_BYTES"):
        load_settings()


# --- production -----------------------------------------------------------------------------


def test_sound_production_settings_load_without_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch)
    settings = load_settings()
    assert settings.is_production
    assert check_settings(settings) == []


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RELAYLINE_ADMIN_KEY": DEV_ADMIN_KEY}, "RELAYLINE_ADMIN_KEY"),
        ({"RELAYLINE_ADMIN_KEY": "x" * 31}, "RELAYLINE_ADMIN_KEY"),
        ({"RELAYLINE_SECRET_KEY": config.DEV_SECRET_KEY}, "RELAYLINE_SECRET_KEY"),
        ({"RELAYLINE_SECRET_KEY": "short"}, "RELAYLINE_SECRET_KEY"),
        ({"RELAYLINE_METRICS_TOKEN": "short"}, "RELAYLINE_METRICS_TOKEN"),
        ({"RELAYLINE_ALLOWED_ORIGINS": "https://a.example,*"}, "RELAYLINE_ALLOWED_ORIGINS"),
    ],
)
def test_production_refuses_unsafe_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    production(monkeypatch, **env)
    with refused(variable):
        load_settings()


def test_production_refuses_default_secrets_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYLINE_ENV", "production")
    with refused("RELAYLINE_ADMIN_KEY"):
        load_settings()


def test_wildcard_origin_without_credentials_is_only_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    production(monkeypatch, RELAYLINE_ALLOWED_ORIGINS="*", RELAYLINE_ALLOW_CREDENTIALS="false")
    warnings = check_settings(load_settings())
    assert any("RELAYLINE_ALLOWED_ORIGINS" in w for w in warnings)


# --- SQLite on a network file system ---------------------------------------------------------


def test_unc_path_counts_as_a_network_file_system() -> None:
    path = sqlite_path("sqlite:///" + "//server/share/relay.db")
    assert path is not None and str(path).startswith("//server")
    assert config._on_network_fs(path)
    assert config._on_network_fs(Path("\\\\server\\share\\relay.db"))


def test_sqlite_on_a_network_share_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    production(monkeypatch, RELAYLINE_DATABASE_URL="sqlite:///" + "//server/share/relay.db")
    with refused("RELAYLINE_DATABASE_URL"):
        load_settings()


def test_sqlite_on_a_mounted_network_fs_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Path] = []

    def on_nfs(path: Path) -> bool:
        seen.append(path)
        return True

    monkeypatch.setattr(config, "_on_network_fs", on_nfs)
    production(monkeypatch, RELAYLINE_DATABASE_URL=f"sqlite:///{tmp_path / 'relay.db'}")
    with refused("RELAYLINE_DATABASE_URL"):
        load_settings()
    assert seen == [tmp_path / "relay.db"]


def test_sqlite_on_a_network_fs_is_a_warning_in_development(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(config, "_on_network_fs", lambda path: True)
    monkeypatch.setenv("RELAYLINE_DATABASE_URL", f"sqlite:///{tmp_path / 'relay.db'}")
    warnings = check_settings(load_settings())
    assert any("network file system" in w and "RELAYLINE_DATABASE_URL" in w for w in warnings)


def test_local_sqlite_file_is_not_a_network_fs(tmp_path: Path) -> None:
    assert not config._on_network_fs(tmp_path / "relay.db")


def test_in_memory_sqlite_has_no_path() -> None:
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("sqlite:////data/relay.db?mode=rwc") == Path("/data/relay.db")


# --- warnings -------------------------------------------------------------------------------


def test_development_defaults_are_warned_about() -> None:
    warnings = check_settings(Settings(_env_file=None))
    assert any("RELAYLINE_ADMIN_KEY" in w for w in warnings)
    assert any("RELAYLINE_SECRET_KEY" in w for w in warnings)


def test_several_instances_without_redis_are_warned_about() -> None:
    settings = Settings(_env_file=None, admin_key=STRONG, secret_key=STRONG, instances=3)
    warnings = check_settings(settings)
    assert any("RELAYLINE_REDIS_URL" in w for w in warnings)
    assert any("SQLite" in w for w in warnings)  # the default database cannot be shared

    shared = Settings(
        _env_file=None,
        admin_key=STRONG,
        secret_key=STRONG,
        instances=3,
        redis_url="redis://127.0.0.1:6379/0",
        database_url="postgresql://u@h/db",
    )
    shared_warnings = check_settings(shared)
    assert not any("RELAYLINE_REDIS_URL" in w or "SQLite" in w for w in shared_warnings)
    assert not any("RATE_LIMIT_STORAGE" in w for w in shared_warnings)


def test_a_shared_bus_over_a_private_store_or_private_limits_is_warned_about() -> None:
    redis = "redis://127.0.0.1:6379/0"
    on_sqlite = Settings(_env_file=None, admin_key=STRONG, secret_key=STRONG, redis_url=redis)
    assert any("SQLite" in w and "PostgreSQL" in w for w in check_settings(on_sqlite))
    private_limits = Settings(
        _env_file=None,
        admin_key=STRONG,
        secret_key=STRONG,
        redis_url=redis,
        database_url="postgresql://u@h/db",
        rate_limit_storage_url="memory://",
    )
    assert any("rate limits stay per process" in w for w in check_settings(private_limits))


def test_trusting_every_address_is_warned_about() -> None:
    settings = Settings(
        _env_file=None, admin_key=STRONG, secret_key=STRONG, trusted_proxies=["0.0.0.0/0"]
    )
    assert any("RELAYLINE_TRUSTED_PROXIES" in w for w in check_settings(settings))


def test_logging_chat_content_in_production_is_warned_about(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    production(monkeypatch, RELAYLINE_LOG_CHAT_EVENTS="true")
    assert any("RELAYLINE_LOG_CHAT_EVENTS" in w for w in check_settings(load_settings()))


def test_safe_development_settings_have_no_warnings() -> None:
    settings = Settings(_env_file=None, admin_key=STRONG, secret_key=STRONG)
    assert check_settings(settings) == []
