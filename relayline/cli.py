"""The ``relayline`` command: parses options and calls into the package; exits only here."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from relayline.config import ConfigError, Settings, check_settings, load_settings

if TYPE_CHECKING:
    from relayline.observability.logging import LogRuntime

log = structlog.get_logger("relayline.cli")

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 1


def _fatal(message: str, code: int) -> NoReturn:
    log.critical("fatal", detail=message)
    sys.exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        # Logging is not configured yet (its settings may be the bad ones): one plain line.
        print(f"fatal: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def _logging(settings: Settings) -> LogRuntime:
    from relayline.observability.logging import configure_logging

    try:
        return configure_logging(settings)
    except ConfigError as exc:  # e.g. a log file that cannot be opened
        print(f"fatal: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def _run(coro_fn: Callable[[Settings], Coroutine[Any, Any, int]], settings: Settings) -> int:
    from relayline.errors import RelaylineError, Unavailable

    runtime = _logging(settings)
    for warning in check_settings(settings):
        log.warning("config_warning", detail=warning)
    try:
        return asyncio.run(coro_fn(settings))
    except Unavailable as exc:
        _fatal(f"RELAYLINE_DATABASE_URL: {exc.detail}", EXIT_UNAVAILABLE)
    except RelaylineError as exc:  # e.g. an unknown tenant id
        _fatal(exc.detail, EXIT_UNAVAILABLE)
    finally:
        runtime.close()


async def _preflight(settings: Settings) -> int:
    from relayline.api.app import open_store
    from relayline.errors import Unavailable

    try:
        db = await open_store(settings)
    except Unavailable as exc:
        _fatal(f"RELAYLINE_DATABASE_URL: {exc.detail}", EXIT_UNAVAILABLE)
    await db.dispose()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from relayline.server import RelayServerProcess, server_config

    settings = _settings()
    runtime = _logging(settings)
    try:
        for warning in check_settings(settings):
            log.warning("config_warning", detail=warning)
        asyncio.run(_preflight(settings))
        try:
            config = server_config(settings, args.host, args.port)
        except ConfigError as exc:
            _fatal(str(exc), EXIT_CONFIG)
        log.info("listening", url=f"http://{args.host}:{args.port}")
        server = RelayServerProcess(config)

        def stop(_signum: int, _frame: object) -> None:
            server.should_exit = True

        # uvicorn re-raises the signal that stopped it once it has shut down gracefully; under
        # the default handler that would kill the process (status 143) before the log queue is
        # flushed below. This handler only asks the server to stop, which it already has.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        server.run()
        if not server.started:
            app = config.app
            cause = getattr(app, "startup_error", None) or "see the log above"
            _fatal(f"the relay did not start: {cause}", EXIT_UNAVAILABLE)
    finally:
        runtime.close()
    return 0


async def _migrate(settings: Settings) -> int:
    from relayline.api.app import open_store
    from relayline.store import migrate

    db = await open_store(settings)  # checks that the database answers; auto_migrate is off
    try:
        await migrate.upgrade(db.engine)
        log.info("migrated", revision=await migrate.current_revision(db.engine))
    finally:
        await db.dispose()
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    settings = _settings()
    settings.auto_migrate = False
    return _run(_migrate, settings)


def _admin(
    action: Callable[[Any], Coroutine[Any, Any, object]],
) -> Callable[[Settings], Coroutine[Any, Any, int]]:
    async def run(settings: Settings) -> int:
        from relayline.api.app import open_store

        db = await open_store(settings)
        try:
            async with db.write() as session:
                result = await action(session)
            print(json.dumps(result, indent=2))
        finally:
            await db.dispose()
        return 0

    return run


def _ops(
    action: Callable[[Settings], Coroutine[Any, Any, dict[str, Any]]],
) -> int:
    """Run a backup operation; print what it did as JSON, or one ``fatal:`` line."""
    from relayline.ops.backups import BackupError

    settings = _settings()
    settings.auto_migrate = False

    async def run(settings: Settings) -> int:
        try:
            result = await action(settings)
        except BackupError as exc:
            print(f"fatal: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(json.dumps(result, indent=2))
        return 0

    return _run(run, settings)


def cmd_backup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relayline.ops import backups

    if args.backup_action == "verify":
        return _ops(lambda settings: backups.verify(settings, Path(args.path)))

    async def take(settings: Settings) -> dict[str, Any]:
        folder = Path(args.to) if args.to else settings.backup_dir
        made = await backups.create(settings, folder, compress=args.compress)
        pruned = backups.prune(
            folder, keep=settings.backup_keep, max_age_days=settings.backup_max_age_days
        )
        log.info(
            "backup_taken",
            file=str(made.data),
            bytes=made.info["bytes"],
            duration_s=made.info["duration_s"],
            pruned=len(pruned),
        )
        result = {**made.info, "path": str(made.data), "pruned": [str(p) for p in pruned]}
        if args.verify:
            result["verified"] = await backups.verify(settings, made.data)
        return result

    return _ops(take)


def cmd_restore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relayline.ops import backups

    async def run(settings: Settings) -> dict[str, Any]:
        done = await backups.restore(settings, Path(args.path), force=args.force)
        log.info("restored", backup=done["backup"], duration_s=done["duration_s"])
        return done

    return _ops(run)


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Compute the daily analytics of past UTC days: ``--day D``, ``--from D --to D`` (a
    backfill), or yesterday; print what was done as JSON."""
    from datetime import timedelta

    from relayline.errors import ValidationFailed
    from relayline.store import analytics

    today = analytics.utc_today()
    try:
        if args.day and (args.from_day or args.to_day):
            raise ValueError("--day or --from/--to, not both")
        if args.day:
            first = last = analytics.parse_day(args.day)
        elif args.from_day or args.to_day:
            if not (args.from_day and args.to_day):
                raise ValueError("--from and --to go together")
            first, last = analytics.parse_day(args.from_day), analytics.parse_day(args.to_day)
        else:
            first = last = today - timedelta(days=1)
        analytics.check_range(first, last)
        if last >= today:
            raise ValueError(f"{last} is not over yet (UTC days)")
    except (ValueError, ValidationFailed) as exc:
        detail = exc.detail if isinstance(exc, ValidationFailed) else str(exc)
        print(f"fatal: {detail}", file=sys.stderr)
        return EXIT_CONFIG
    settings = _settings()
    settings.auto_migrate = False

    async def run(settings: Settings) -> int:
        from relayline.api.app import open_store

        db = await open_store(settings)
        done: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        try:
            for day in analytics.days(first, last):
                try:
                    result = await analytics.aggregate_day(
                        db, day, today=today, retention_days=settings.metrics_retention_days
                    )
                except analytics.AnalyticsRefused as exc:
                    skipped.append({"day": day.isoformat(), "reason": exc.detail})
                    continue
                done.append(
                    {
                        "day": day.isoformat(),
                        "tenant_rows": result.tenant_rows,
                        "duration_ms": result.duration_ms,
                    }
                )
        finally:
            await db.dispose()
        log.info("analytics_aggregated", days=[d["day"] for d in done], skipped=len(skipped))
        print(json.dumps({"days": done, "skipped": skipped}, indent=2))
        return 0

    return _run(run, settings)


def cmd_smoke(args: argparse.Namespace) -> int:
    """Smoke-test a running relay; no settings or logging of its own (it is a client)."""
    from relayline.ops.smoke import SmokeFailed, smoke

    try:
        report = asyncio.run(smoke(args.url, args.token, topic=args.topic))
    except SmokeFailed as exc:
        print(f"fatal: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps({"url": report.url, "steps": report.steps}, indent=2))
    return 0


def cmd_create_tenant(args: argparse.Namespace) -> int:
    from relayline.store import tenants

    async def action(session: Any) -> object:
        row = await tenants.create_tenant(session, args.name)
        return {"id": row.id, "name": row.name}

    return _run(_admin(action), _settings())


def cmd_create_key(args: argparse.Namespace) -> int:
    from relayline.api_keys import SCOPES
    from relayline.store import tenants

    scopes = sorted(set(args.scopes.split(","))) if args.scopes else sorted(SCOPES)
    unknown = set(scopes) - SCOPES
    if unknown:
        print(f"fatal: unknown scopes {sorted(unknown)}; known: {sorted(SCOPES)}", file=sys.stderr)
        return EXIT_CONFIG

    async def action(session: Any) -> object:
        row, key = await tenants.create_key(session, args.tenant_id, scopes, args.name)
        return {"id": row.id, "tenant_id": row.tenant_id, "scopes": row.scopes, "key": key}

    return _run(_admin(action), _settings())


def cmd_list_tenants(_: argparse.Namespace) -> int:
    from relayline.store import tenants

    async def action(session: Any) -> object:
        rows = await tenants.list_tenants(session, None, 1000)
        return [{"id": r.id, "name": r.name, "disabled": r.disabled} for r in rows]

    return _run(_admin(action), _settings())


def cmd_worker(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from relayline.observability.error_tracking import init_error_tracking
    from relayline.observability.logging import configure_logging
    from relayline.worker.daemon import MetricsUnavailable, run_loop, run_worker
    from relayline.worker.settings import WorkerSettings

    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("relay_url", args.relay),
            ("worker_key_id", args.key_id),
            ("worker_secret", args.secret),
            ("llm_url", args.llm_url),
            ("model", args.model),
            ("worker_capacity", args.capacity),
            ("worker_id", args.worker_id),
            ("terminals", True if args.terminals else None),
        )
        if value is not None
    }
    try:
        worker_settings = WorkerSettings(**overrides)
    except ValidationError as exc:
        print(f"fatal: {exc.errors()[0].get('loc')}: {exc.errors()[0].get('msg')}", file=sys.stderr)
        return EXIT_CONFIG
    if not worker_settings.worker_key_id or not worker_settings.worker_secret.get_secret_value():
        print(
            "fatal: RELAYLINE_WORKER_KEY_ID and RELAYLINE_WORKER_SECRET (or --key-id/--secret) "
            "are required",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if worker_settings.terminals and not sys.platform.startswith("linux"):
        print("fatal: --terminals needs Linux (/proc, prctl)", file=sys.stderr)
        return EXIT_CONFIG
    if worker_settings.terminals and not worker_settings.terminal_program_map:
        print(
            "fatal: --terminals needs RELAYLINE_TERMINAL_PROGRAMS "
            "(name=command entries separated by ';')",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    settings = _settings()
    runtime = configure_logging(settings)
    # Here rather than in the worker package, which may not import relayline.observability:
    # the worker's error lines reach Sentry through the same logging pipeline and redaction.
    tracking = init_error_tracking(worker_settings.sentry_dsn, settings, component="worker")
    try:
        run_loop(run_worker(worker_settings))
    except MetricsUnavailable:
        return EXIT_UNAVAILABLE  # run_worker logged why, in one line
    finally:
        if tracking is not None:
            tracking.close()
        runtime.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relayline.demo import run_demo
    from relayline.observability.logging import configure_logging

    settings = _settings()
    runtime = configure_logging(settings)
    try:
        for warning in check_settings(settings):
            log.warning("config_warning", detail=warning)
        asyncio.run(_preflight(settings))
        asyncio.run(
            run_demo(
                settings,
                args.host,
                args.port,
                Path(args.workspace).resolve(),
                llm_url=args.llm_url,
                model=args.model,
            )
        )
    finally:
        runtime.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayline", description="Real-time relay for AI agents.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the relay")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(func=cmd_migrate)

    demo = sub.add_parser("demo", help="relay + worker + built-in model, with a demo tenant")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument(
        "--workspace",
        default="./relayline-demo-workspace",
        help="folder the demo agent's tools may use",
    )
    demo.add_argument(
        "--llm-url",
        default=None,
        help="an OpenAI-compatible model server (…/v1) instead of the built-in model",
    )
    demo.add_argument("--model", default="local", help="model name sent to --llm-url")
    demo.set_defaults(func=cmd_demo)

    worker = sub.add_parser("worker", help="run an agent worker that connects out to a relay")
    worker.add_argument(
        "--relay",
        default=None,
        help="relay base URL, or several, comma-separated (RELAYLINE_RELAY_URL)",
    )
    worker.add_argument("--key-id", default=None, help="RELAYLINE_WORKER_KEY_ID")
    worker.add_argument("--secret", default=None, help="RELAYLINE_WORKER_SECRET")
    worker.add_argument(
        "--llm-url", default=None, help="OpenAI-compatible base URL; none: the built-in local model"
    )
    worker.add_argument("--model", default=None)
    worker.add_argument("--capacity", type=int, default=None)
    worker.add_argument("--worker-id", default=None)
    worker.add_argument(
        "--terminals",
        action="store_true",
        help="also run terminal sessions of the programs in RELAYLINE_TERMINAL_PROGRAMS",
    )
    worker.set_defaults(func=cmd_worker)

    backup = sub.add_parser(
        "backup", help="back up the database (verify: check a backup end to end)"
    )
    backup.add_argument("--to", default=None, help="folder for the backup (RELAYLINE_BACKUP_DIR)")
    backup.add_argument("--compress", action="store_true", help="gzip a SQLite backup")
    backup.add_argument("--verify", action="store_true", help="then verify what was written")
    backup_actions = backup.add_subparsers(dest="backup_action")
    verify = backup_actions.add_parser("verify", help="check a backup's checksum and contents")
    verify.add_argument("path", help="the backup's data file or its manifest")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser(
        "restore", help="restore a backup into the configured database (relay stopped)"
    )
    restore.add_argument("path", help="the backup's data file or its manifest")
    restore.add_argument(
        "--force", action="store_true", help="replace a database that already holds data"
    )
    restore.set_defaults(func=cmd_restore)
    aggregate = sub.add_parser(
        "aggregate", help="compute the daily analytics of past UTC days (default: yesterday)"
    )
    aggregate.add_argument("--day", default=None, help="one UTC day, YYYY-MM-DD")
    aggregate.add_argument("--from", dest="from_day", default=None, help="first day of a backfill")
    aggregate.add_argument("--to", dest="to_day", default=None, help="last day (included)")
    aggregate.set_defaults(func=cmd_aggregate)

    smoke = sub.add_parser("smoke", help="check a running relay: ready, WebSocket, ping, subscribe")
    smoke.add_argument("--url", required=True, help="the relay's base URL")
    smoke.add_argument("--token", required=True, help="the admin key, or a key with --topic")
    smoke.add_argument(
        "--topic", default="admin", help="a topic the token may subscribe to (default: admin)"
    )
    smoke.set_defaults(func=cmd_smoke)

    admin = sub.add_parser("admin", help="operator commands").add_subparsers(
        dest="action", required=True
    )
    tenant = admin.add_parser("create-tenant", help="create a tenant")
    tenant.add_argument("name")
    tenant.set_defaults(func=cmd_create_tenant)
    key = admin.add_parser("create-key", help="create an API key for a tenant (printed once)")
    key.add_argument("tenant_id")
    key.add_argument(
        "--scopes", default=None, help="comma-separated: chats,sessions,publish,terminals"
    )
    key.add_argument("--name", default=None)
    key.set_defaults(func=cmd_create_key)
    admin.add_parser("list-tenants", help="list tenants").set_defaults(func=cmd_list_tenants)
    return parser


# Top-level modules of the ``server`` extra: only the relay's commands import them.
SERVER_MODULES = frozenset(
    {
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "sqlalchemy",
        "alembic",
        "aiosqlite",
        "asyncpg",
        "limits",
        "redis",
        "jwt",
        "ulid",
    }
)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in SERVER_MODULES:
            raise
        # A worker-only install (``pip install relayline``) has no relay: say how to get one.
        print(
            f"fatal: `relayline {args.command}` needs the relay's dependencies "
            f"({exc.name} is missing): pip install 'relayline[server]'",
            file=sys.stderr,
        )
        code = EXIT_CONFIG
    sys.exit(code)
