"""The SQLite file's disk fills up: writes answer 503 ``unavailable`` (with ``Retry-After``),
reads go on, nothing is corrupted or half-stored, and writes work again once space returns,
without a restart. The disk is a small tmpfs of the test's own."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relayline.testing import RelayServer
from tests.conftest import SettingsFactory
from tests.fixtures import new_tenant

DISK_BYTES = 4 * 1024 * 1024
CONTENT = "x" * 15_000  # a message of 15 kB: a few hundred fill what is left quickly


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as out:
        while True:
            try:
                out.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        # Whatever is left (less than a block) goes too.
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 512)


async def user_messages(http: httpx.AsyncClient, path: str, auth: dict[str, str]) -> list[str]:
    """Every user message of the chat, read page by page."""
    found: list[str] = []
    after = 0
    while True:
        r = await http.get(path, headers=auth, params={"after": after})
        assert r.status_code == 200, r.text
        body = r.json()
        found += [m["content"] for m in body["items"] if m["role"] == "user"]
        if body["next_after"] is None:
            return found
        after = body["next_after"]


async def test_a_full_disk_refuses_writes_with_503_and_recovers_when_space_returns(
    make_settings: SettingsFactory, small_disk: Path
) -> None:
    database = small_disk / "relayline.db"
    server = RelayServer(make_settings(database_url=f"sqlite:///{database}"))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            tenant = await new_tenant(server, http)
            chat = await tenant.chat()
            post = f"/v1/chats/{chat}/messages"
            stored: list[str] = []
            r = await http.post(post, json={"content": "before"}, headers=tenant.auth)
            assert r.status_code == 202, r.text
            stored.append("before")

            fill(small_disk / "filler")
            refused = None
            for i in range(200):
                content = f"{i}:{CONTENT}"
                r = await http.post(post, json={"content": content}, headers=tenant.auth)
                if r.status_code == 202:
                    stored.append(content)
                    continue
                refused = r
                break
            assert refused is not None, "the disk never filled up"
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "unavailable"
            assert refused.headers["Retry-After"]
            # Reads go on while writes cannot.
            assert await user_messages(http, post, tenant.auth) == stored

            os.remove(small_disk / "filler")
            r = await http.post(post, json={"content": "after"}, headers=tenant.auth)
            assert r.status_code == 202, r.text
            stored.append("after")
            assert await user_messages(http, post, tenant.auth) == stored
    finally:
        await server.stop()
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        query = "SELECT content FROM messages WHERE role = 'user' ORDER BY seq"
        rows = db.execute(query).fetchall()
    assert [row[0] for row in rows] == stored
