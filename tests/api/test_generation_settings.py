"""A tenant's generation settings: bounded and validated (422, nothing stored), kept as given."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api, admin_headers, assert_error


async def _tenant(api: Api) -> str:
    r = await api.client.post("/v1/admin/tenants", json={"name": "t"}, headers=admin_headers())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_generation_settings_are_stored_and_read_back(api: Api) -> None:
    tenant = await _tenant(api)
    body = {
        "system_prompt": "Be brief.",
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 256,
        "stop": ["\n\nUser:", "END"],
    }
    path = f"/v1/admin/tenants/{tenant}/agent"
    r = await api.client.put(path, json=body, headers=admin_headers())
    assert r.status_code == 200, r.text
    got = (await api.client.get(path, headers=admin_headers())).json()
    assert {k: got[k] for k in body} == body
    # Unset again: null means the worker's default.
    r = await api.client.put(path, json={"temperature": None}, headers=admin_headers())
    assert r.status_code == 200
    got = (await api.client.get(path, headers=admin_headers())).json()
    assert got["temperature"] is None and got["max_tokens"] is None and got["stop"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.01),
        ("temperature", "hot"),
        ("temperature", True),
        ("top_p", 0),
        ("top_p", 1.5),
        ("max_tokens", 0),
        ("max_tokens", 32_769),
        ("max_tokens", 1.5),
        ("max_tokens", "100"),
        ("stop", "END"),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", [""]),
        ("stop", ["x" * 65]),
        ("stop", [1]),
    ],
)
async def test_bad_generation_settings_are_422_and_change_nothing(
    api: Api, field: str, value: Any
) -> None:
    tenant = await _tenant(api)
    path = f"/v1/admin/tenants/{tenant}/agent"
    r = await api.client.put(path, json={"temperature": 0.5}, headers=admin_headers())
    assert r.status_code == 200
    r = await api.client.put(path, json={field: value}, headers=admin_headers())
    error = assert_error(r, 422, "validation_error")
    assert field in error["detail"]
    got = (await api.client.get(path, headers=admin_headers())).json()
    assert got["temperature"] == 0.5


async def test_non_finite_numbers_are_422(api: Api) -> None:
    tenant = await _tenant(api)
    r = await api.client.put(
        f"/v1/admin/tenants/{tenant}/agent",
        content=b'{"temperature": NaN}',
        headers={**admin_headers(), "content-type": "application/json"},
    )
    error = assert_error(r, 422, "validation_error")
    assert "temperature" in error["detail"] and "finite" in error["detail"]
