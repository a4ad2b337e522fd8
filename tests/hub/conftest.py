from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from relayline.testing import RelayServer
from tests.conftest import ADMIN_KEY, SettingsFactory


@dataclass
class Tenant:
    id: str
    key: str
    http: httpx.AsyncClient

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def chat(self) -> str:
        r = await self.http.post("/v1/chats", json={"title": "t"}, headers=self.auth)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def session(self, chat_ids: list[str]) -> str:
        r = await self.http.post("/v1/sessions", json={"chat_ids": chat_ids}, headers=self.auth)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    async def publish(self, topic: str, events: list[dict[str, Any]]) -> dict[str, Any]:
        r = await self.http.post(
            "/v1/publish", json={"topic": topic, "events": events}, headers=self.auth
        )
        assert r.status_code == 202, r.text
        body: dict[str, Any] = r.json()
        return body


RelayFactory = Callable[..., Awaitable[RelayServer]]


@pytest.fixture
async def start_relay(make_settings: SettingsFactory) -> AsyncIterator[RelayFactory]:
    servers: list[RelayServer] = []

    async def start(**overrides: Any) -> RelayServer:
        server = RelayServer(make_settings(**overrides))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def relay(start_relay: RelayFactory) -> RelayServer:
    return await start_relay()


async def new_tenant(server: RelayServer, http: httpx.AsyncClient, name: str = "acme") -> Tenant:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = await http.post(f"{server.url}/v1/admin/tenants", json={"name": name}, headers=admin)
    assert r.status_code == 201, r.text
    tenant_id = r.json()["id"]
    r = await http.post(f"{server.url}/v1/admin/tenants/{tenant_id}/keys", json={}, headers=admin)
    assert r.status_code == 201, r.text
    return Tenant(tenant_id, r.json()["key"], http)


@pytest.fixture
async def http(relay: RelayServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as client:
        yield client


@pytest.fixture
async def tenant(relay: RelayServer, http: httpx.AsyncClient) -> Tenant:
    return await new_tenant(relay, http)
