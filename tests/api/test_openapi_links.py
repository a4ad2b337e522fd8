"""The OpenAPI document's links (create -> read, update, delete), read off the route table, and
the status codes it documents for every operation."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from relayline.api import openapi_links
from relayline.api.app import create_app
from relayline.config import Settings
from tests.conftest import ADMIN_KEY, Api, admin_headers, assert_error, bearer

# Creating operations that nothing can follow, and why.
NO_FOLLOWERS = {
    "/v1/sessions": "a browser session token is a credential; nothing reads it by id",
}


def _document() -> dict[str, Any]:
    document: dict[str, Any] = create_app(
        Settings(_env_file=None, admin_key=ADMIN_KEY)
    ).http.openapi()
    return document


def _operations(document: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        operation["operationId"]: (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def _links(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(creating operation's path, target operation's path, link) of every link."""
    by_id = _operations(document)
    found = []
    for _, path, operation in by_id.values():
        for link in operation["responses"].get("201", {}).get("links", {}).values():
            found.append((path, by_id[link["operationId"]][1], link))
    return found


def test_every_creating_operation_has_links() -> None:
    document = _document()
    assert openapi_links.creates_without_links(document, NO_FOLLOWERS.__contains__) == []


def test_the_links_the_api_promises() -> None:
    pairs = {(source, target) for source, target, _ in _links(_document())}
    for target in (
        "/v1/chats/{chat_id}",
        "/v1/chats/{chat_id}/messages",
        "/v1/chats/{chat_id}/archive",
        "/v1/chats/{chat_id}/cancel",
        "/v1/sessions",
        "/v1/terminals",
        "/v1/publish",
    ):
        assert ("/v1/chats", target) in pairs, target
    assert ("/v1/terminals", "/v1/terminals/{terminal_id}") in pairs
    assert ("/v1/admin/tenants", "/v1/admin/tenants/{tenant_id}/keys") in pairs
    assert ("/v1/admin/tenants/{tenant_id}/keys", "/v1/admin/keys/{key_id}") in pairs
    assert ("/v1/public/codes", "/v1/public/sessions") in pairs


def test_every_operation_with_an_id_in_its_path_is_reached_by_a_link() -> None:
    document = _document()
    targets = {target for _, target, _ in _links(document)}
    with_ids = {path for path in document["paths"] if "{" in path}
    assert with_ids - targets == set()


def test_link_expressions_name_what_the_creator_has() -> None:
    document = _document()
    by_path = {path: item for path, item in document["paths"].items()}
    for source, target, link in _links(document):
        created = by_path[source]["post"]["responses"]["201"]["content"]["application/json"]
        ref = created["schema"]["$ref"].rsplit("/", 1)[-1]
        answered = document["components"]["schemas"][ref]["properties"]
        values: list[Any] = [*link.get("parameters", {}).values()]
        for value in link.get("requestBody", {}).values():
            values.extend(value if isinstance(value, list) else [value])
        for value in values:
            if "$response.body#/" in value:
                name = value.split("$response.body#/", 1)[1].rstrip("}")
                assert name in answered, (source, target, value)
            elif value.startswith("$request.path."):
                assert "{" + value.removeprefix("$request.path.") + "}" in source
            else:
                pytest.fail(f"{source} -> {target}: {value}")


class _Widget(BaseModel):
    id: str


def _widgets_app(*, with_reader: bool) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/widgets", status_code=201)
    async def create_widget() -> _Widget:
        return _Widget(id="w")

    if with_reader:

        @app.get("/v1/widgets/{widget_id}")
        async def get_widget(widget_id: str) -> _Widget:
            return _Widget(id=widget_id)

    openapi_links.install(app)
    return app


def test_a_new_creating_route_that_nothing_follows_is_noticed() -> None:
    lonely = _widgets_app(with_reader=False).openapi()
    assert openapi_links.creates_without_links(lonely) == ["POST /v1/widgets"]

    followed = _widgets_app(with_reader=True).openapi()
    assert openapi_links.creates_without_links(followed) == []
    links = followed["paths"]["/v1/widgets"]["post"]["responses"]["201"]["links"]
    assert [link["parameters"] for link in links.values()] == [{"widget_id": "$response.body#/id"}]


async def test_a_body_that_is_not_json_gets_a_documented_status(api: Api) -> None:
    _, key = await api.tenant_with_key()
    for path, headers in (
        ("/v1/sessions", bearer(key)),
        ("/v1/chats", bearer(key)),
        ("/v1/admin/tenants", admin_headers()),
    ):
        r = await api.client.post(
            path,
            content=b"T\xff",
            headers={**headers, "Content-Type": "application/json"},
        )
        assert_error(r, 400, "validation_error")
        assert "400" in _document()["paths"][path]["post"]["responses"], path
