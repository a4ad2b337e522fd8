"""Tenant isolation (OWASP API1, broken object level authorization), generated from the route
table.

Tenant A owns real objects: chats, a message, terminals (on a worker that runs them), two
completions of the OpenAI-compatible gateway (one not kept: a chat of kind ``completion``; one
kept: a chat with its texts). The credentials tried on them: B's key, B's session token, a
token of B's whose lists name A's chats and terminals, and a session token of A's scoped to
another chat of A's. For every route of the relay (read from the app itself, in its test and
its production shape) and every WebSocket op and topic kind:

- those credentials on A's ids get exactly the answer a made-up id of the same shape gets
  (same status, code and detail), and for REST that answer is 404: nothing says that A's
  object exists;
- A itself gets a real answer with its key, so the ids are live (the 404s above mean
  something);
- listings of B name none of A's objects; admin-only routes refuse tenant credentials with
  403 whatever the id; the worker socket refuses them at the handshake.

Each runs on one relay and on two instances sharing PostgreSQL and Redis (A's objects made on
one, probed on the other).

``ROUTES``, ``OPS`` and ``TOPIC_KINDS`` classify every route, op and topic kind; a new one
that is not classified fails ``test_every_route_op_and_topic_kind_is_classified``, so adding
one forces a decision about who may reach it.

Topic refusals (WebSocket ops, SSE, publish) answer ``forbidden`` / 403 "topic not allowed"
for a topic of another tenant and for one that does not exist alike (and for ``admin``): the
protocol's documented refusal, which says nothing about existence.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import asyncpg
import httpx
import pytest
from fastapi.routing import iter_route_contexts
from redis.asyncio import Redis
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from relayline import session_tokens
from relayline.api.app import create_app
from relayline.config import Settings
from relayline.envelope import TopicKind
from relayline.hub.client import ClientConnection
from relayline.ids import new_id
from relayline.store.models import Chat, Message
from relayline.testing import RelayServer, WsHarness
from relayline.testing.harness import OpError
from tests.conftest import PG_SERVER
from tests.fixtures import RelayFactory, Tenant, Tenants, Workers, admin, eventually
from tests.terminals.helpers import terminal_worker_settings

# How a route treats ids of other tenants.
Kind = Literal[
    "owned",  # a path parameter names an object of the caller's tenant: others get 404
    "body_ids",  # ids or topics in the body or query: checked one by one below
    "listing",  # the caller's own objects: another tenant's never appear
    "own_tenant",  # acts on the caller's own tenant only; takes no id
    "admin",  # admin key (or metrics token) only: a tenant credential gets 403
    "admin_hidden",  # admin key only, and a 404 to anyone else (it hides that it exists)
    "public",  # no credential, no tenant data (pages, health, the widget's code exchange)
]


@dataclass(frozen=True)
class Rule:
    kind: Kind
    # Which of A's objects fill the path parameters ("spare_…" for routes that end them).
    objects: dict[str, str] = field(default_factory=dict)
    # Credentials refused by their kind whatever the id (403 for a real and a made-up id).
    refused: frozenset[str] = frozenset()
    body: dict[str, Any] | None = None
    why: str = ""


def owned(refused: frozenset[str] = frozenset(), **objects: str) -> Rule:
    return Rule("owned", objects=objects, refused=refused)


SESSION = frozenset({"session"})

ROUTES: dict[tuple[str, str], Rule] = {
    # Operator routes.
    ("POST", "/v1/admin/tenants"): Rule("admin", body={"name": "x"}),
    ("GET", "/v1/admin/tenants"): Rule("admin"),
    ("POST", "/v1/admin/tenants/{tenant_id}/disable"): Rule("admin", {"tenant_id": "tenant"}),
    ("POST", "/v1/admin/tenants/{tenant_id}/enable"): Rule("admin", {"tenant_id": "tenant"}),
    ("POST", "/v1/admin/tenants/{tenant_id}/keys"): Rule("admin", {"tenant_id": "tenant"}),
    ("GET", "/v1/admin/tenants/{tenant_id}/keys"): Rule("admin", {"tenant_id": "tenant"}),
    ("DELETE", "/v1/admin/keys/{key_id}"): Rule("admin", {"key_id": "key"}),
    ("GET", "/v1/admin/turns/summary"): Rule("admin"),
    ("GET", "/v1/admin/turns"): Rule("admin"),
    ("GET", "/v1/admin/tenants/{tenant_id}/agent"): Rule("admin", {"tenant_id": "tenant"}),
    ("PUT", "/v1/admin/tenants/{tenant_id}/agent"): Rule("admin", {"tenant_id": "tenant"}, body={}),
    ("GET", "/v1/admin/workers"): Rule("admin"),
    ("GET", "/v1/admin/analytics"): Rule("admin"),
    ("GET", "/metrics"): Rule("admin", why="the metrics token or the admin key"),
    # Chats.
    ("POST", "/v1/chats"): Rule("own_tenant", body={"title": "t"}),
    ("GET", "/v1/chats"): Rule("listing"),
    ("GET", "/v1/chats/{chat_id}"): owned(chat_id="chat"),
    ("POST", "/v1/chats/{chat_id}/archive"): owned(SESSION, chat_id="spare_chat"),
    ("POST", "/v1/chats/{chat_id}/messages"): Rule(
        "owned", {"chat_id": "chat"}, body={"content": "hello"}
    ),
    ("GET", "/v1/chats/{chat_id}/messages"): owned(chat_id="chat"),
    ("POST", "/v1/chats/{chat_id}/cancel"): owned(chat_id="chat"),
    ("POST", "/v1/sessions"): Rule("body_ids", why="chat_ids and terminal_ids"),
    ("GET", "/v1/analytics"): Rule("listing", why="the caller's tenant's figures"),
    # Terminals.
    ("POST", "/v1/terminals"): Rule("body_ids", why="chat_id"),
    ("GET", "/v1/terminals"): Rule("listing"),
    ("GET", "/v1/terminals/{terminal_id}"): owned(terminal_id="terminal"),
    ("DELETE", "/v1/terminals/{terminal_id}"): owned(terminal_id="spare_terminal"),
    # Events.
    ("POST", "/v1/publish"): Rule("body_ids", why="topic"),
    ("GET", "/v1/events"): Rule("body_ids", why="topics"),
    # The OpenAI-compatible gateway: completions are chats of kind "completion", checked below.
    ("GET", "/v1/models"): Rule("listing"),
    ("POST", "/v1/chat/completions"): Rule("own_tenant"),
    # The public widget.
    ("POST", "/v1/public/codes"): Rule("own_tenant", why="a code for the caller's tenant"),
    ("GET", "/v1/public/challenge"): Rule("public"),
    ("POST", "/v1/public/sessions"): Rule("public", why="a code names its tenant, signed"),
    # Health, pages, static files, the API explorer outside production.
    ("GET", "/health"): Rule("public"),
    ("GET", "/health/ready"): Rule("public"),
    ("GET", "/"): Rule("public"),
    ("GET", "/admin"): Rule("public", why="the page; its data comes from admin routes"),
    ("GET", "/widget"): Rule("public"),
    ("GET", "/static"): Rule("public"),
    ("GET", "/docs"): Rule("public"),
    ("GET", "/docs/oauth2-redirect"): Rule("public"),
    ("GET", "/openapi.json"): Rule(
        "admin_hidden", why="production: the admin key only (tests/api/test_server_limits.py)"
    ),
    # The WebSocket endpoints are ASGI routes of their own (RelayApp.SOCKETS): ops below.
    ("WS", "/v1/ws"): Rule("body_ids", why="topics of its ops"),
    ("WS", "/v1/worker/ws"): Rule("admin", why="worker keys (HMAC), no tenant credential"),
}

# WebSocket ops: those that take a topic are tried on every topic kind below.
OPS: dict[str, Literal["topic", "none"]] = {
    "subscribe": "topic",
    "unsubscribe": "topic",
    "send": "topic",
    "cancel": "topic",
    "approve": "topic",
    "term.input": "topic",
    "term.resize": "topic",
    "ping": "none",
}

# Topic kinds and the objects of A they name ("admin" takes no id: tenant credentials never
# reach it).
TOPIC_KINDS: dict[str, list[str]] = {
    "chat": ["chat", "completion_chat", "kept_completion_chat"],
    "term": ["terminal"],
    "tenant": ["tenant"],
    "admin": [],
}

ID_WORDS = ("id", "ids", "topic", "topics")

# The routes with ids in their body or query, and the test that tries A's ids in them: a route
# classified "body_ids" needs a check written for it.
BODY_ID_CHECKS = {
    ("POST", "/v1/sessions"): "test_ids_in_bodies_are_answered_as_missing",
    ("POST", "/v1/terminals"): "test_ids_in_bodies_are_answered_as_missing",
    ("POST", "/v1/publish"): "test_sse_and_publish_on_other_tenants_topics_answer_as_missing",
    ("GET", "/v1/events"): "test_sse_and_publish_on_other_tenants_topics_answer_as_missing",
    ("WS", "/v1/ws"): "test_websocket_ops_on_other_tenants_topics_answer_as_missing",
}


def _settings(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "admin_key": "isolation-admin-key-" + "a" * 32,
        "secret_key": "isolation-secret-key-" + "s" * 32,
    }
    return Settings(_env_file=None, **{**base, **values})


def route_table() -> dict[tuple[str, str], set[str]]:
    """(method, path) of every HTTP route of the relay, in its test and production shapes,
    with the names of the inputs that look like ids (path, query and body fields)."""
    found: dict[tuple[str, str], set[str]] = {}
    for settings in (_settings(env="test"), _settings(env="production")):
        relay = create_app(settings)
        for context in iter_route_contexts(relay.http.routes):
            route = context.original_route if hasattr(context, "original_route") else context
            path = getattr(route, "path", None)
            assert isinstance(path, str), route
            methods = getattr(route, "methods", None) or {"GET"}
            inputs = _inputs(route)
            for method in methods - {"HEAD"}:
                found.setdefault((method, path), set()).update(inputs)
        for path in relay.SOCKETS:
            found[("WS", path)] = set()
    return found


def _inputs(route: object) -> set[str]:
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return set()
    names: set[str] = set()

    def walk(dep: Any) -> None:
        for param in (*dep.path_params, *dep.query_params):
            names.add(param.name)
        for param in dep.body_params:
            annotation = param.field_info.annotation
            fields = getattr(annotation, "model_fields", None) or {}
            names.update(fields)
        for sub in dep.dependencies:
            walk(sub)

    walk(dependant)
    return {n for n in names if n.split("_")[-1] in ID_WORDS or n in ID_WORDS}


def test_every_route_op_and_topic_kind_is_classified() -> None:
    table = route_table()
    unclassified = sorted(set(table) - set(ROUTES))
    assert not unclassified, (
        f"routes without a tenant isolation rule (add them to ROUTES): {unclassified}"
    )
    stale = sorted(set(ROUTES) - set(table))
    assert not stale, f"ROUTES names routes the relay does not have: {stale}"
    for key, inputs in table.items():
        rule = ROUTES[key]
        path_params = {p[1:-1] for p in key[1].split("/") if p.startswith("{")}
        if path_params:
            assert rule.kind in ("owned", "admin"), (key, rule.kind)
            assert set(rule.objects) == path_params, (key, rule.objects)
        elif inputs:
            # An id or a topic in the query or the body.
            assert rule.kind in ("body_ids", "admin", "listing"), (key, inputs, rule.kind)
    body_ids = {key for key, rule in ROUTES.items() if rule.kind == "body_ids"}
    assert body_ids == set(BODY_ID_CHECKS), "a route with ids in its body needs a check"
    assert all(name in globals() for name in BODY_ID_CHECKS.values())
    assert set(OPS) == {str(op) for op in ClientConnection.ops}
    assert set(TOPIC_KINDS) == set(get_args(TopicKind))


# The world: tenant A's objects, tenant B's credentials.

KIND_OF = {"key": "key", "session": "session", "naming": "session", "scoped": "session"}


@dataclass
class World:
    relay: RelayServer  # where A's objects were made (and the worker is connected)
    probe_relay: RelayServer  # where they are tried: the same relay, or another instance
    probe: httpx.AsyncClient
    a: Tenant
    b: Tenant
    ids: dict[str, str]  # A's objects by role
    b_session: str  # B's session token, minted with every right a session can have
    b_naming_a: str  # a token of B's whose chat list names A's chats (never minted so)
    a_scoped: str  # A's session token for chat "other_chat" only

    def creds(self) -> dict[str, str]:
        """The credentials that must not reach A's objects, by name."""
        return {
            "key": self.b.key,
            "session": self.b_session,
            "naming": self.b_naming_a,
            "scoped": self.a_scoped,
        }

    def fill(self, path: str, objects: dict[str, str], made_up: bool) -> str:
        for name, role in objects.items():
            path = path.replace("{" + name + "}", new_id() if made_up else self.ids[role])
        return path


async def _json(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def _open_terminal(a: Tenant, **body: Any) -> str:
    r = await a.http.post(
        "/v1/terminals", json={"program": "cat", "cols": 80, "rows": 24, **body}, headers=a.auth
    )
    return str((await _json(r, 201))["id"])


async def _completion_chats(relay: RelayServer, a: Tenant) -> tuple[str, str]:
    """Two completions of A's: one its tenant does not keep (a chat of kind ``completion``,
    invisible to the chat API), then one it keeps (the agent setting ``store_completions``:
    a chat with the completion's texts)."""
    db = relay.app.http.state.relay.db
    made: list[str] = []
    for keep in (False, True):
        r = await a.http.put(
            f"/v1/admin/tenants/{a.id}/agent", json={"store_completions": keep}, headers=admin()
        )
        await _json(r, 200)
        r = await a.http.post(
            "/v1/chat/completions",
            json={"model": "local", "messages": [{"role": "user", "content": f"hello {keep}"}]},
            headers=a.auth,
        )
        await _json(r, 200)
        async with db.read() as session:
            chat = await session.scalar(
                select(Chat)
                .join(Message, Message.chat_id == Chat.id)
                .where(Chat.tenant_id == a.id, Message.content == f"hello {keep}")
                if keep
                else select(Chat).where(Chat.tenant_id == a.id, Chat.kind == "completion")
            )
        assert chat is not None and chat.kind == ("chat" if keep else "completion")
        made.append(chat.id)
    return made[0], made[1]


@asynccontextmanager
async def shared_state() -> AsyncIterator[dict[str, Any]]:
    """Settings for instances that share a PostgreSQL database of their own and a Redis (with
    a prefix of their own); skip when either server is missing."""
    redis_url = os.environ.get("RELAYLINE_TEST_REDIS", "redis://127.0.0.1:6379/15")
    client = Redis.from_url(redis_url, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:
        pytest.skip(f"Redis not reachable at {redis_url}: {exc}")
    finally:
        await client.aclose()
    try:
        server = await asyncpg.connect(PG_SERVER, timeout=3)
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}: {exc}")
    name = f"relayline_test_{os.getpid()}_{secrets.token_hex(6)}"
    try:
        await server.execute(f'CREATE DATABASE "{name}"')
        yield {
            "database_url": f"{PG_SERVER.rsplit('/', 1)[0]}/{name}",
            "redis_url": redis_url,
            "redis_prefix": f"rltest:{secrets.token_hex(8)}:",
        }
    finally:
        await server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await server.close()


@pytest.fixture(
    params=[
        "one instance",
        pytest.param("two instances", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
async def world(
    request: pytest.FixtureRequest, turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> AsyncIterator[World]:
    """A's objects made on one relay; with two instances (PostgreSQL, Redis), tried on the
    other one, whose terminals are known from the shared directory."""
    settings: dict[str, Any] = {"ws_op_rate": 10_000.0, "ws_op_burst": 10_000}
    if request.param == "one instance":
        yield await _world(settings, turn_relay, tenants, workers)
        return
    async with shared_state() as shared:
        made = await _world({**settings, **shared}, turn_relay, tenants, workers)
        try:
            yield made
        finally:
            # Before their database goes.
            await made.probe_relay.stop()
            await made.relay.stop()


async def _world(
    settings: dict[str, Any], turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> World:
    two = "redis_url" in settings
    relay = await turn_relay(**settings)
    probe_relay = await turn_relay(**settings) if two else relay
    probe = await tenants.client(probe_relay)
    await workers.start(relay, **terminal_worker_settings())
    a = await tenants.new(relay, "tenant-a")
    b = await tenants.new(relay, "tenant-b")

    async def offered() -> bool:
        r = await a.http.get("/v1/terminals", headers=a.auth)
        return r.status_code == 200 and "cat" in r.json()["programs"]

    await eventually(offered)
    chat, other_chat, spare_chat = await a.chat(), await a.chat(), await a.chat()
    r = await a.http.post(f"/v1/chats/{chat}/messages", json={"content": "hi"}, headers=a.auth)
    message = (await _json(r, 202))["message"]["id"]
    r = await a.http.get("/v1/admin/tenants/" + a.id + "/keys", headers=admin())
    key = (await _json(r, 200))["items"][0]["id"]
    ids = {
        "tenant": a.id,
        "key": key,
        "chat": chat,
        "other_chat": other_chat,
        "spare_chat": spare_chat,
        "message": message,
        "terminal": await _open_terminal(a, chat_id=chat),
        "spare_terminal": await _open_terminal(a, chat_id=chat),
    }
    ids["completion_chat"], ids["kept_completion_chat"] = await _completion_chats(relay, a)
    b_chat = await b.chat()
    r = await b.http.post(
        "/v1/sessions",
        json={
            "chat_ids": [b_chat],
            "can_create_chats": True,
            "analytics": True,
            "completions": True,
            "terminals": "write",
            # A token may name any ids; only its own tenant's count.
            "terminal_ids": [ids["terminal"]],
        },
        headers=b.auth,
    )
    b_session = str((await _json(r, 201))["token"])
    r = await a.http.post(
        "/v1/sessions",
        json={"chat_ids": [other_chat], "terminals": "write", "completions": True},
        headers=a.auth,
    )
    a_scoped = str((await _json(r, 201))["token"])
    # The relay never mints a token naming another tenant's chats; were it to, the chats'
    # owner is still checked: such a token is tried too.
    settings = relay.app.http.state.relay.settings
    b_naming_a, _ = session_tokens.mint(
        settings.secret_key.get_secret_value(),
        b.id,
        [ids[role] for role in ("chat", "other_chat", "completion_chat", "kept_completion_chat")],
        600,
        int(time.time()),
        can_create_chats=True,
        can_read_analytics=True,
        terminals="write",
        terminal_ids=[ids["terminal"], ids["spare_terminal"]],
        can_use_completions=True,
    )
    return World(relay, probe_relay, probe, a, b, ids, b_session, b_naming_a, a_scoped)


def answer(response: httpx.Response) -> tuple[int, str | None, str | None]:
    """What a response tells the caller: status, error code and detail."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return response.status_code, None, None
    return response.status_code, error.get("code"), error.get("detail")


async def call(world: World, method: str, path: str, token: str, rule: Rule) -> httpx.Response:
    body = rule.body if method in ("POST", "PUT") else None
    return await world.probe.request(
        method, path, json=body, headers={"Authorization": f"Bearer {token}"}
    )


def owned_routes() -> Iterator[tuple[str, str, Rule]]:
    for (method, path), rule in ROUTES.items():
        if rule.kind == "owned":
            yield method, path, rule


async def test_other_tenants_ids_are_answered_as_missing_on_every_route(world: World) -> None:
    problems: list[str] = []
    checked = 0
    for method, path, rule in owned_routes():
        for name, token in world.creds().items():
            roles = [rule.objects]
            if "chat_id" in rule.objects and name != "scoped":
                roles += [{"chat_id": "completion_chat"}, {"chat_id": "kept_completion_chat"}]
            for objects in roles:
                foreign = answer(
                    await call(world, method, world.fill(path, objects, False), token, rule)
                )
                missing = answer(
                    await call(world, method, world.fill(path, objects, True), token, rule)
                )
                expected = 403 if KIND_OF[name] in rule.refused else 404
                checked += 1
                if foreign != missing or foreign[0] != expected:
                    problems.append(
                        f"{method} {path} {objects} as {name}: {foreign} vs made-up {missing}"
                    )
    # A's own key reaches the very same objects: the ids are real.
    for method, path, rule in owned_routes():
        r = await call(world, method, world.fill(path, rule.objects, False), world.a.key, rule)
        if r.status_code >= 400:
            problems.append(f"{method} {path} as A's own key: {r.status_code} {r.text}")
    assert not problems, "\n".join(problems)
    assert checked >= 20


async def test_listings_of_another_tenant_name_none_of_its_objects(world: World) -> None:
    mine = {v for k, v in world.ids.items() if k not in ("key",)}
    problems = []
    for (method, path), rule in ROUTES.items():
        if rule.kind != "listing":
            continue
        for name, token in world.creds().items():
            if name == "scoped":
                continue
            r = await call(world, method, path, token, rule)
            if r.status_code != 200:
                problems.append(f"{method} {path} as {name}: {r.status_code} {r.text}")
            leaked = sorted(i for i in mine if i in r.text)
            if leaked:
                problems.append(f"{method} {path} as {name} shows {leaked}")
            if path == "/v1/analytics" and r.json().get("tenant_id") != world.b.id:
                problems.append(f"{method} {path} as {name}: figures of {r.json()['tenant_id']}")
    # The same listings show A its own objects (so the check above would see them).
    for path, role in (("/v1/chats", "chat"), ("/v1/terminals", "terminal")):
        r = await world.probe.get(path, headers=world.a.auth)
        assert world.ids[role] in r.text, r.text
    # A's scoped session lists its one chat, not the others.
    r = await world.probe.get("/v1/chats", headers={"Authorization": f"Bearer {world.a_scoped}"})
    assert [c["id"] for c in (await _json(r, 200))["items"]] == [world.ids["other_chat"]]
    assert not problems, "\n".join(problems)


async def test_admin_routes_refuse_tenant_credentials_whatever_the_id(world: World) -> None:
    problems = []
    for (method, path), rule in ROUTES.items():
        if rule.kind != "admin" or method == "WS":
            continue
        for name, token in world.creds().items():
            real = answer(
                await call(world, method, world.fill(path, rule.objects, False), token, rule)
            )
            made_up = answer(
                await call(world, method, world.fill(path, rule.objects, True), token, rule)
            )
            if real[:2] != (403, "forbidden") or real != made_up:
                problems.append(f"{method} {path} as {name}: {real} vs made-up {made_up}")
    assert not problems, "\n".join(problems)


async def test_ids_in_bodies_are_answered_as_missing(world: World) -> None:
    a = world.ids
    problems = []

    async def same(
        name: str,
        token: str,
        method: str,
        path: str,
        body: dict[str, Any],
        made_up: dict[str, Any],
        status: int,
    ) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        real = answer(await world.probe.request(method, path, json=body, headers=auth))
        fake = answer(await world.probe.request(method, path, json=made_up, headers=auth))
        if real != fake or real[0] != status:
            problems.append(f"{method} {path} {body} as {name}: {real} vs made-up {fake}")

    fake_id = new_id()
    for name, token in world.creds().items():
        refused = 403 if name != "key" else 404
        for role in ("chat", "completion_chat", "kept_completion_chat"):
            await same(
                name,
                token,
                "POST",
                "/v1/sessions",
                {"chat_ids": [a[role]]},
                {"chat_ids": [fake_id]},
                refused,
            )
        term = {"program": "cat", "cols": 80, "rows": 24}
        await same(
            name,
            token,
            "POST",
            "/v1/terminals",
            {**term, "chat_id": a["chat"]},
            {**term, "chat_id": fake_id},
            404,
        )
    assert not problems, "\n".join(problems)


def topics_of_a(world: World) -> Iterator[tuple[str, str]]:
    """(A's topic, a made-up topic of the same kind)."""
    for kind, roles in TOPIC_KINDS.items():
        for role in roles:
            yield f"{kind}:{world.ids[role]}", f"{kind}:{new_id()}"
    yield "admin", f"chat:{new_id()}"


def _op_fields(op: str, topic: str) -> dict[str, Any]:
    extra: dict[str, dict[str, Any]] = {
        "send": {"content": "x", "client_msg_id": "m-1"},
        "approve": {"approval_id": new_id(), "decision": "approve"},
        "term.input": {"data": "x"},
        "term.resize": {"cols": 80, "rows": 24},
    }
    return {"topic": topic, **extra.get(op, {})}


async def _op(ws: WsHarness, op: str, topic: str) -> str:
    """The op's answer, with the topic's id taken out (acks may echo the topic)."""
    try:
        result: Any = ["ack", await ws.send_op(op, **_op_fields(op, topic))]
    except OpError as exc:
        result = ["error", exc.code, exc.detail]
    return json.dumps(result).replace(topic.partition(":")[2] or topic, "<id>")


async def test_websocket_ops_on_other_tenants_topics_answer_as_missing(world: World) -> None:
    problems = []
    checked = 0
    for name, token in world.creds().items():
        async with WsHarness(world.probe_relay, token=token, auth="header") as ws:
            for theirs, made_up in topics_of_a(world):
                for op, takes in OPS.items():
                    if takes != "topic":
                        continue
                    real, fake = await _op(ws, op, theirs), await _op(ws, op, made_up)
                    checked += 1
                    acted = real.startswith('["ack"') and op != "unsubscribe"
                    if (real != fake and theirs != "admin") or acted:
                        problems.append(f"{op} {theirs} as {name}: {real} vs made-up {fake}")
            await ws.send_op("ping")  # still connected, still served
    assert not problems, "\n".join(problems)
    assert checked == 4 * 6 * 7


async def _sse_answer(world: World, token: str, topic: str) -> tuple[int, str | None, str | None]:
    auth = {"Authorization": f"Bearer {token}"}
    async with world.probe.stream("GET", "/v1/events", params={"topics": topic}, headers=auth) as r:
        if r.status_code == 200:
            return 200, None, None  # a stream: the topic was granted
        await r.aread()
        return answer(r)


async def test_sse_and_publish_on_other_tenants_topics_answer_as_missing(world: World) -> None:
    problems = []
    events = [{"type": "custom.probe", "data": {}}]
    for name, token in world.creds().items():
        auth = {"Authorization": f"Bearer {token}"}
        for theirs, made_up in topics_of_a(world):
            real = await _sse_answer(world, token, theirs)
            fake = await _sse_answer(world, token, made_up)
            if real != fake or real[0] != 403:
                problems.append(f"SSE {theirs} as {name}: {real} vs made-up {fake}")
            sent = [
                answer(
                    await world.probe.post(
                        "/v1/publish", json={"topic": t, "events": events}, headers=auth
                    )
                )
                for t in (theirs, made_up)
            ]
            if sent[0] != sent[1] or sent[0][0] != 403:
                problems.append(f"publish {theirs} as {name}: {sent[0]} vs made-up {sent[1]}")
    assert not problems, "\n".join(problems)


async def test_posts_to_another_tenants_chat_spend_none_of_its_budget(
    start_relay: RelayFactory, tenants: Tenants
) -> None:
    """The per-chat rate limit counts a chat's own posts: another tenant's refused posts to its
    id (404) do not use it up."""
    relay = await start_relay(rate_limit_chat="3/minute")
    a, b = await tenants.new(relay, "tenant-a"), await tenants.new(relay, "tenant-b")
    chat = await a.chat()
    for _ in range(5):
        r = await b.http.post(f"/v1/chats/{chat}/messages", json={"content": "x"}, headers=b.auth)
        assert answer(r)[:2] == (404, "not_found")
    r = await a.http.post(f"/v1/chats/{chat}/messages", json={"content": "hi"}, headers=a.auth)
    assert r.status_code == 202, r.text


async def test_worker_socket_refuses_tenant_credentials(world: World) -> None:
    """The worker endpoint takes signed worker keys only: a tenant's key or session token is
    refused at the handshake, whatever it would have claimed."""
    url = world.probe_relay.url.replace("http", "ws", 1) + "/v1/worker/ws"
    for name, token in world.creds().items():
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5
            ):
                pass
        assert refused.value.response.status_code == 401, name
