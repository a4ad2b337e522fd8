"""Backups of the relay's database, their manifest, verification and restore.

A backup is two files in the backup folder: the data (``relayline-<UTC time>.sqlite[.gz]`` or
``….pgdump``) and its manifest (``….manifest.json``). Both are written under a temporary name
and renamed when complete, the manifest last: a backup without a manifest is not a backup.

- **SQLite**: SQLite's online backup API, page by page, while the relay keeps writing (WAL
  readers do not block writers); the copy is a consistent snapshot. Optionally gzip'd.
- **PostgreSQL**: ``pg_dump --format=custom`` (compressed, one consistent snapshot; Debian's
  ``postgresql-client``).

The manifest holds what verification and a restore drill check: the schema revision, the row
count of every table, the data file's sha256 and size, the tools' versions, start and end time.
:func:`verify` checks the sha256, then the data itself: SQLite's ``integrity_check`` and the
row counts; for PostgreSQL ``pg_restore --list`` and a scratch restore into a temporary database
whose row counts are compared, then dropped. :func:`restore` refuses a database that holds data
unless forced, and migrates the schema forward when the backup is older.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from relayline import __version__
from relayline.config import Settings, sqlite_path
from relayline.store import migrate
from relayline.store.engine import async_url
from relayline.store.models import Base

MANIFEST_SUFFIX = ".manifest.json"
FORMAT = 1
_CHUNK = 1024 * 1024


class BackupError(Exception):
    """A backup, verification or restore that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class Backup:
    data: Path
    manifest: Path
    info: dict[str, Any]


def _tables() -> list[str]:
    return [t.name for t in Base.metadata.sorted_tables]


def _libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq (pg_dump, pg_restore) takes it."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _utc_stamp(when: float) -> str:
    moment = datetime.fromtimestamp(when, UTC)
    return moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z"


async def _run(*argv: str, env: dict[str, str] | None = None) -> str:
    """Run a tool; its stdout, or BackupError with the first lines of its stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
    except FileNotFoundError:
        raise BackupError(
            f"{argv[0]} not found: install PostgreSQL's client tools (Debian: postgresql-client)"
        ) from None
    out, err = await proc.communicate()
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[:3]
        raise BackupError(f"{Path(argv[0]).name} failed: {' '.join(detail) or proc.returncode}")
    return out.decode(errors="replace")


async def _pg_counts(url: str) -> tuple[dict[str, int], str | None]:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            existing = set(
                (
                    await conn.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
                    )
                ).scalars()
            )
            counts = {}
            for table in _tables():
                if table in existing:
                    counts[table] = int(
                        # The table names are the schema's own, never input.
                        (await conn.execute(text(f'SELECT count(*) FROM "{table}"'))).scalar_one()  # noqa: S608
                    )
            revision = None
            if "alembic_version" in existing:
                revision = (
                    await conn.execute(text("SELECT version_num FROM alembic_version"))
                ).scalar_one_or_none()
            return counts, revision
    finally:
        await engine.dispose()


def _sqlite_counts(path: Path) -> tuple[dict[str, int], str | None]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        existing = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        counts = {
            table: int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])  # noqa: S608
            for table in _tables()
            if table in existing
        }
        revision = None
        if "alembic_version" in existing:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        return counts, revision
    finally:
        conn.close()


def _sqlite_source(settings: Settings) -> Path:
    path = sqlite_path(settings.database_url)
    if path is None:
        raise BackupError("an in-memory SQLite database cannot be backed up")
    if not path.exists():
        raise BackupError(f"no database at {path}")
    return path


def _copy_sqlite(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy while writers go on."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        # All pages in one step, inside one read transaction: a consistent snapshot, and with
        # WAL the relay's writers are not blocked meanwhile (copying in smaller steps would
        # start over after every write, and might never finish under steady writes).
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        dst.close()
        src.close()


def _gzip(source: Path, target: Path) -> None:
    with source.open("rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, _CHUNK)


async def create(
    settings: Settings, folder: Path, *, compress: bool = False, now: float | None = None
) -> Backup:
    """Take a backup into ``folder``; see the module docstring."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    started = time.time() if now is None else now
    stamp = _utc_stamp(started)
    tools: dict[str, str] = {"relayline": __version__}
    tmp = folder / f".relayline-{stamp}-{secrets.token_hex(4)}.tmp"
    try:
        if settings.uses_sqlite:
            source = _sqlite_source(settings)
            name = f"relayline-{stamp}.sqlite" + (".gz" if compress else "")
            plain = tmp.with_suffix(".sqlite")
            await asyncio.to_thread(_copy_sqlite, source, plain)
            counts, revision = await asyncio.to_thread(_sqlite_counts, plain)
            if compress:
                await asyncio.to_thread(_gzip, plain, tmp)
                plain.unlink()
            else:
                plain.rename(tmp)
            tools["sqlite"] = sqlite3.sqlite_version
            backend = "sqlite"
        else:
            name = f"relayline-{stamp}.pgdump"
            url = _libpq_url(settings.database_url)
            # The counts first, the dump after: rows written in between are in the dump but
            # not in the counts, so verification compares the dump with itself (a scratch
            # restore), and the manifest's counts are a lower bound of what the dump holds.
            counts, revision = await _pg_counts(settings.database_url)
            await _run("pg_dump", "--format=custom", "--no-owner", f"--file={tmp}", url)
            tools["pg_dump"] = (await _run("pg_dump", "--version")).strip()
            backend = "postgresql"
        data = folder / name
        info = {
            "format": FORMAT,
            "backend": backend,
            "file": name,
            "schema_revision": revision,
            "tables": counts,
            "sha256": await asyncio.to_thread(_sha256, tmp),
            "bytes": tmp.stat().st_size,
            "compressed": compress if backend == "sqlite" else True,
            "tools": tools,
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "duration_s": round(time.time() - started, 3) if now is None else None,
        }
        os.replace(tmp, data)
        manifest = data.with_name(data.name + MANIFEST_SUFFIX)
        manifest_tmp = manifest.with_name(f".{manifest.name}.tmp")
        manifest_tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.replace(manifest_tmp, manifest)
        return Backup(data, manifest, info)
    finally:
        await asyncio.to_thread(_remove_leftovers, folder, stamp)


def _remove_leftovers(folder: Path, stamp: str) -> None:
    for leftover in folder.glob(f".relayline-{stamp}-*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def list_backups(folder: Path) -> list[Backup]:
    """Complete backups in ``folder`` (those with a manifest), oldest first."""
    found = []
    for manifest in sorted(folder.glob(f"relayline-*{MANIFEST_SUFFIX}")):
        data = manifest.with_name(manifest.name[: -len(MANIFEST_SUFFIX)])
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(manifest.read_text(encoding="utf-8"))
            if data.exists():
                found.append(Backup(data, manifest, info))
    return found


def prune(
    folder: Path, *, keep: int, max_age_days: float | None, now: float | None = None
) -> list[Path]:
    """Delete the oldest backups past ``keep`` and those older than ``max_age_days``; the
    newest is always kept. The deleted data files, oldest first."""
    backups = list_backups(folder)
    if not backups:
        return []
    newest = backups[-1]
    cutoff = None
    if max_age_days is not None:
        cutoff = datetime.fromtimestamp(time.time() if now is None else now, UTC) - timedelta(
            days=max_age_days
        )
    doomed = []
    for index, backup in enumerate(backups):
        if backup is newest:
            continue
        too_many = index < len(backups) - keep
        started = datetime.fromisoformat(str(backup.info.get("started_at")))
        too_old = cutoff is not None and started < cutoff
        if too_many or too_old:
            doomed.append(backup)
    for backup in doomed:
        backup.manifest.unlink(missing_ok=True)
        backup.data.unlink(missing_ok=True)
    return [b.data for b in doomed]


def read_manifest(path: Path) -> tuple[Path, dict[str, Any]]:
    """The data file and manifest of a backup named by either of its two files."""
    manifest = (
        path if path.name.endswith(MANIFEST_SUFFIX) else path.with_name(path.name + MANIFEST_SUFFIX)
    )
    if not manifest.exists():
        raise BackupError(f"no manifest next to {path} ({manifest.name}): not a complete backup")
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BackupError(f"{manifest.name} is not valid JSON: {exc}") from None
    data = manifest.with_name(str(info.get("file") or manifest.name[: -len(MANIFEST_SUFFIX)]))
    if not data.exists():
        raise BackupError(f"the backup's data file {data.name} is missing")
    return data, info


@contextlib.contextmanager
def _plain_sqlite(data: Path, info: dict[str, Any]) -> Iterator[Path]:
    """The backup as a plain SQLite file (a temporary copy when it is compressed)."""
    if not info.get("compressed"):
        yield data
        return
    with tempfile.TemporaryDirectory(prefix="relayline-verify-") as scratch:
        plain = Path(scratch) / "backup.sqlite"
        try:
            with gzip.open(data, "rb") as src, plain.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise BackupError(f"cannot decompress {data.name}: {exc}") from None
        yield plain


def _check_counts(found: dict[str, int], expected: dict[str, Any], *, at_least: bool) -> None:
    for table, count in expected.items():
        got = found.get(table)
        if got is None:
            raise BackupError(f"table {table} is missing from the backup")
        if got != count and not (at_least and got > count):
            raise BackupError(f"table {table}: {got} rows, the manifest says {count}")


def _verify_sqlite(data: Path, info: dict[str, Any]) -> dict[str, int]:
    with _plain_sqlite(data, info) as plain:
        try:
            conn = sqlite3.connect(f"file:{plain}?mode=ro", uri=True)
            try:
                result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"not a readable SQLite database: {exc}") from None
        if result != ["ok"]:
            raise BackupError(f"integrity_check failed: {'; '.join(map(str, result[:3]))}")
        try:
            counts, _ = _sqlite_counts(plain)
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"cannot count rows: {exc}") from None
    _check_counts(counts, info.get("tables") or {}, at_least=False)
    return counts


async def _scratch_database(settings: Settings) -> tuple[str, str]:
    """A new empty database on the configured server: (its SQLAlchemy URL, its name)."""
    name = f"relayline_verify_{secrets.token_hex(6)}"
    engine = create_async_engine(async_url(settings.database_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        raise BackupError(
            f"cannot create a scratch database to restore into ({type(exc).__name__}: {exc}); "
            "the database user needs CREATEDB"
        ) from None
    finally:
        await engine.dispose()
    return _with_database(settings.database_url, name), name


async def _drop_database(settings: Settings, name: str) -> None:
    engine = create_async_engine(async_url(settings.database_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


async def verify(settings: Settings, path: Path) -> dict[str, Any]:
    """Check a backup end to end (see the module docstring); what was checked, or
    BackupError naming the first thing that is wrong."""
    data, info = read_manifest(path)
    digest = await asyncio.to_thread(_sha256, data)
    if digest != info.get("sha256"):
        raise BackupError(
            f"sha256 mismatch: {data.name} is not the file the manifest describes "
            "(corrupted or truncated)"
        )
    if info.get("backend") == "sqlite":
        counts = await asyncio.to_thread(_verify_sqlite, data, info)
        return {"backend": "sqlite", "sha256": digest, "integrity": "ok", "tables": counts}
    if info.get("backend") != "postgresql":
        raise BackupError(f"unknown backend {info.get('backend')!r} in the manifest")
    if settings.uses_sqlite:
        raise BackupError("verifying a PostgreSQL backup needs a PostgreSQL RELAYLINE_DATABASE_URL")
    listing = await _run("pg_restore", "--list", str(data))
    scratch_url, name = await _scratch_database(settings)
    try:
        await _run(
            "pg_restore",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            f"--dbname={_libpq_url(scratch_url)}",
            str(data),
        )
        counts, _ = await _pg_counts(scratch_url)
    finally:
        await _drop_database(settings, name)
    # The dump may hold rows written after the manifest counted them (never fewer).
    _check_counts(counts, info.get("tables") or {}, at_least=True)
    return {
        "backend": "postgresql",
        "sha256": digest,
        "entries": sum(1 for line in listing.splitlines() if line and not line.startswith(";")),
        "tables": counts,
    }


async def _holds_data(settings: Settings) -> bool:
    if settings.uses_sqlite:
        path = sqlite_path(settings.database_url)
        if path is None or not path.exists():
            return False
        counts, _ = await asyncio.to_thread(_sqlite_counts, path)
    else:
        counts, _ = await _pg_counts(settings.database_url)
    return any(counts.get(t, 0) for t in ("tenants", "chats", "messages", "turns"))


async def restore(settings: Settings, path: Path, *, force: bool = False) -> dict[str, Any]:
    """Restore a backup into the configured database (the relay must be stopped); what was
    done. Refuses a database that holds data unless ``force``; migrates forward afterwards."""
    started = time.monotonic()
    data, info = read_manifest(path)
    if await asyncio.to_thread(_sha256, data) != info.get("sha256"):
        raise BackupError(f"sha256 mismatch: {data.name} is corrupted or truncated")
    backend = info.get("backend")
    if (backend == "sqlite") != settings.uses_sqlite:
        raise BackupError(
            f"a {backend} backup cannot be restored into this "
            f"{'SQLite' if settings.uses_sqlite else 'PostgreSQL'} database"
        )
    if not force and await _holds_data(settings):
        raise BackupError(
            "the database already holds data: restore --force replaces it (take a backup first)"
        )
    if backend == "sqlite":
        target = sqlite_path(settings.database_url)
        if target is None:
            raise BackupError("cannot restore into an in-memory SQLite database")
        target.parent.mkdir(parents=True, exist_ok=True)

        def place() -> None:
            with _plain_sqlite(data, info) as plain:
                staged = target.with_name(f".{target.name}.restore-{secrets.token_hex(4)}")
                shutil.copyfile(plain, staged)
                # A stale write-ahead log would be replayed onto the restored file.
                for suffix in ("-wal", "-shm", "-journal"):
                    target.with_name(target.name + suffix).unlink(missing_ok=True)
                os.replace(staged, target)

        await asyncio.to_thread(place)
    else:
        await _run(
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            f"--dbname={_libpq_url(settings.database_url)}",
            str(data),
        )
    engine = create_async_engine(async_url(settings.database_url))
    try:
        before = await migrate.current_revision(engine)
        await migrate.upgrade(engine)
        after = await migrate.current_revision(engine)
    finally:
        await engine.dispose()
    if settings.uses_sqlite:
        target_path = sqlite_path(settings.database_url)
        assert target_path is not None
        counts, _ = await asyncio.to_thread(_sqlite_counts, target_path)
    else:
        counts, _ = await _pg_counts(settings.database_url)
    return {
        "backup": data.name,
        "backend": backend,
        "schema_revision": {"backup": before, "now": after},
        "tables": counts,
        "duration_s": round(time.monotonic() - started, 3),
    }
