"""A store that is locked or unreachable answers 503 with Retry-After, not 500."""

from __future__ import annotations

import httpx
from sqlalchemy.exc import OperationalError

from relayline.api.app import create_app
from tests.conftest import SettingsFactory, admin_headers


async def test_store_busy_is_503_with_retry_after(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings())

    @app.http.get("/test-locked")
    async def locked() -> None:
        raise OperationalError("INSERT …", {}, Exception("database is locked"))

    transport = httpx.ASGITransport(app=app)
    async with (
        app.http.router.lifespan_context(app.http),
        httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client,
    ):
        r = await client.get("/test-locked", headers=admin_headers())
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    body = r.json()
    assert body["error"]["code"] == "unavailable"
    assert "locked" not in body["error"]["detail"]
    assert body["error"]["request_id"] == r.headers["X-Request-ID"]
