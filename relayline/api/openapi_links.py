"""OpenAPI links in the API's document: what a created object's id can be used for next.

The links are read off the route table, so a new route gets its links without a list to keep:

- an operation with a path parameter ``<noun>_id`` (``chat_id``, ``key_id``…) follows the
  operation that creates ``<noun>s`` (a ``POST`` answering 201 whose path ends in ``/<noun>s``):
  the parameter is the created object's ``id``; a path parameter the creator answers under the
  same name is taken from its answer (``chat_id`` of a visitor's session, ``tenant_id`` of a
  key), and the creator's own path parameters pass through;
- an operation whose JSON body takes ``<noun>_id`` or ``<noun>_ids`` follows that creator too
  (``POST /v1/terminals`` ``chat_id``, ``POST /v1/sessions`` ``chat_ids``);
- a body's ``topic`` follows a creator of something that has a topic (``TOPICS``), and a body's
  ``code`` follows the creator of codes.

``creates_without_links`` names the creating operations that nothing follows, so that a new
one is a decision rather than an accident.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI

JsonObject = dict[str, Any]

# The topic of a created object, for bodies that name a topic (see DESIGN "Topics and events").
TOPICS = {
    "chats": "chat:{$response.body#/id}",
    "terminals": "$response.body#/topic",
}
# Body fields that carry a value a creator answered under the same name.
HANDLES = ("code",)
METHODS = ("get", "put", "post", "delete", "patch")


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the generated document with its links."""
    generate = app.openapi

    def openapi() -> JsonObject:
        if app.openapi_schema is None:
            add_links(generate())
        document: JsonObject = app.openapi_schema  # type: ignore[assignment]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(document: JsonObject) -> Iterator[tuple[str, str, JsonObject]]:
    for path, item in document.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _noun(name: str) -> str | None:
    """``chat_id`` and ``chat_ids`` -> ``chats``."""
    for suffix in ("_ids", "_id"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + "s"
    return None


def _resolve(document: JsonObject, schema: JsonObject) -> JsonObject:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    resolved: JsonObject = node
    return resolved


def _json_schema(document: JsonObject, holder: JsonObject) -> JsonObject:
    media = holder.get("content", {}).get("application/json", {})
    return _resolve(document, media.get("schema", {}))


def creators(document: JsonObject) -> list[tuple[str, str, JsonObject]]:
    """The creating operations and what they create: ``("chats", "/v1/chats", operation)``."""
    found = []
    for path, method, operation in _operations(document):
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if method == "post" and "201" in operation.get("responses", {}) and "{" not in last:
            found.append((last, path, operation))
    return found


def _created_fields(document: JsonObject, created: JsonObject) -> JsonObject:
    fields: JsonObject = _json_schema(document, created["responses"]["201"]).get("properties", {})
    return fields


def _path_link(
    document: JsonObject,
    noun: str,
    creator_path: str,
    created: JsonObject,
    target_path: str,
    target: JsonObject,
) -> JsonObject | None:
    parameters: dict[str, str] = {}
    passed = set(_path_params(creator_path))
    answered = _created_fields(document, created)
    fed = False
    for name in _path_params(target_path):
        if _noun(name) == noun:
            parameters[name] = "$response.body#/id"
        elif name in answered:
            parameters[name] = f"$response.body#/{name}"
        elif name in passed:
            parameters[name] = f"$request.path.{name}"
            continue
        else:
            return None  # a parameter this creator cannot supply
        fed = True
    if not fed:
        return None
    return {"operationId": target["operationId"], "parameters": parameters}


def _body_link(
    document: JsonObject, noun: str, created: JsonObject, target: JsonObject
) -> JsonObject | None:
    body = target.get("requestBody")
    if body is None:
        return None
    properties = _json_schema(document, body).get("properties", {})
    created_fields = _created_fields(document, created)
    values: JsonObject = {}
    for name in properties:
        if _noun(name) == noun:
            values[name] = ["$response.body#/id"] if name.endswith("_ids") else "$response.body#/id"
        elif name == "topic" and noun in TOPICS:
            values[name] = TOPICS[noun]
        elif name in HANDLES and name in created_fields:
            values[name] = f"$response.body#/{name}"
    if not values:
        return None
    return {"operationId": target["operationId"], "requestBody": values}


def links_of(document: JsonObject) -> dict[str, JsonObject]:
    """For each creating operation's id, its links (by name) to the operations that follow."""
    result: dict[str, JsonObject] = {}
    for noun, creator_path, created in creators(document):
        links: JsonObject = {}
        for path, _method, operation in _operations(document):
            link = _path_link(document, noun, creator_path, created, path, operation)
            if link is None and operation is not created:
                link = _body_link(document, noun, created, operation)
            if link is not None:
                links[operation["operationId"]] = link
        result[created["operationId"]] = links
    return result


def add_links(document: JsonObject) -> JsonObject:
    """Put the links under each creating operation's 201 response (in place)."""
    by_id = links_of(document)
    for _path, _method, operation in _operations(document):
        links = by_id.get(operation.get("operationId", ""))
        if links:
            operation["responses"]["201"]["links"] = links
    return document


def creates_without_links(
    document: JsonObject, allowed: Callable[[str], bool] = lambda _: False
) -> list[str]:
    """``METHOD path`` of each creating operation (201) that no link leaves from."""
    missing = []
    for path, method, operation in _operations(document):
        response = operation.get("responses", {}).get("201")
        if response is not None and not response.get("links") and not allowed(path):
            missing.append(f"{method.upper()} {path}")
    return missing
