"""The web UI's HTTP side: pages, static files, security headers, path handling."""

from __future__ import annotations

import uuid

import httpx
import pytest

from relayline.api.routes.web import STATIC_ROOT, WEB_ROOT, content_security_policy
from tests.conftest import Api


@pytest.mark.parametrize("path", ["/", "/admin"])
async def test_pages_carry_a_strict_policy(api: Api, path: str) -> None:
    r = await api.client.get(path, headers={"Host": "relay.example:8080"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["connect-src"] == "'self' ws://relay.example:8080 wss://relay.example:8080"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    # No inline script anywhere: every script is a file under /static/.
    assert "<script>" not in r.text and '<script type="module" src="/static/' in r.text


def test_a_forged_host_never_reaches_the_policy() -> None:
    assert content_security_policy("evil; script-src *").count("script-src") == 1
    assert "evil" not in content_security_policy("evil; script-src *")
    assert "ws://[::1]:80" in content_security_policy("[::1]:80")


async def test_static_files_with_types_and_revalidation(api: Api) -> None:
    r = await api.client.get("/static/js/chat.js")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    etag = r.headers["etag"]
    again = await api.client.get("/static/js/chat.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    css = await api.client.get("/static/css/base.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    svg = await api.client.get("/static/img/logo.svg")
    assert svg.headers["content-type"] == "image/svg+xml"
    assert "content-security-policy" in svg.headers


@pytest.mark.parametrize(
    "path",
    [
        "/static/js/nope.js",
        "/static/js",
        "/static/",
        "/static/js\\chat.js",
    ],
)
async def test_nothing_outside_static_is_served(api: Api, path: str) -> None:
    r = await api.client.get(path)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"


# httpx folds a literal ``..`` before sending, so only encoded dots reach the route as ``..``.
@pytest.mark.parametrize(
    "template",
    [
        "/static/%2e%2e/{name}",
        "/static/%2E%2E/{name}",
        "/static/.%2e/{name}",
        "/static/%2e%2e%2f{name}",
        "/static/js/%2e%2e%2f%2e%2e%2f{name}",
        "/static/js/..%2f..%2f{name}",
    ],
)
async def test_encoded_dots_do_not_step_outside_static(api: Api, template: str) -> None:
    # A servable type just outside static/: only the path guard stands between it and a 200.
    name = f"outside-static-test-{uuid.uuid4().hex}.js"
    path = template.format(name=name)
    assert httpx.URL(f"http://relay.test{path}").path.endswith(f"/../{name}")
    outside = WEB_ROOT / name
    outside.write_text("secret = 1;\n")
    try:
        r = await api.client.get(path)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    finally:
        outside.unlink()


async def test_dot_files_stay_private(api: Api) -> None:
    hidden = STATIC_ROOT / "js" / f".hidden-test-{uuid.uuid4().hex}.js"
    hidden.write_text("secret = 1;\n")
    try:
        r = await api.client.get(f"/static/js/{hidden.name}")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    finally:
        hidden.unlink()


async def test_unlisted_file_types_stay_private(api: Api) -> None:
    stray = STATIC_ROOT / "js" / "stray-test-file.py"
    stray.write_text("secret = 1\n")
    try:
        r = await api.client.get("/static/js/stray-test-file.py")
        assert r.status_code == 404
    finally:
        stray.unlink()


async def test_pages_are_not_in_the_api_schema(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    assert "/" not in schema["paths"] and "/static/{path}" not in schema["paths"]
