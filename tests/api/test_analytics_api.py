"""GET /v1/admin/analytics (any tenant, admin key) and GET /v1/analytics (a tenant key's own
tenant): the computed days of a range, validated."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from relayline.store import analytics
from relayline.store.database import Database
from tests.conftest import Api, admin_headers, assert_error, bearer
from tests.store.analytics_data import SEEDED_DAYS, brute_force, seed

TODAY = date(2024, 4, 2)


@pytest.fixture
async def seeded(api: Api) -> dict[str, str]:
    """The fixed data set, its three days computed; tenant ids by name."""
    db: Database = api.app.http.state.relay.db
    ids = (await seed(db)).tenant_ids
    for day in SEEDED_DAYS:
        await analytics.aggregate_day(db, day, today=TODAY, retention_days=0)
    return ids


async def key_of(api: Api, tenant_id: str, scopes: list[str] | None = None) -> str:
    body: dict[str, Any] = {} if scopes is None else {"scopes": scopes}
    r = await api.client.post(
        f"/v1/admin/tenants/{tenant_id}/keys", json=body, headers=admin_headers()
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def test_the_operator_reads_any_tenants_days(api: Api, seeded: dict[str, str]) -> None:
    acme = seeded["acme"]
    r = await api.client.get(
        "/v1/admin/analytics",
        params={"tenant": acme, "from": "2024-03-29", "to": "2024-04-05"},
        headers=admin_headers(),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["tenant_id"], body["from"], body["to"]) == (acme, "2024-03-29", "2024-04-05")
    assert body["aggregated_through"] == "2024-04-01"
    # Only the computed days: the 29th and April 2nd onwards were never computed.
    assert [d["day"] for d in body["days"]] == [d.isoformat() for d in SEEDED_DAYS]
    expected = await brute_force(api.app.http.state.relay.db)
    for row in body["days"]:
        day = row.pop("day")
        assert row == expected[(acme, day)]
    # A tenant without activity gets zeros for the computed days.
    r = await api.client.get(
        "/v1/admin/analytics",
        params={"tenant_id": seeded["idle"], "from": "2024-03-30", "to": "2024-03-30"},
        headers=admin_headers(),
    )
    (idle,) = r.json()["days"]
    assert (idle["messages"], idle["turns"], idle["failed_by_category"]) == (0, 0, {})
    assert idle["first_token_p50_ms"] is None


async def test_a_tenant_key_reads_its_own_tenant_only(api: Api, seeded: dict[str, str]) -> None:
    key = await key_of(api, seeded["globex"])
    r = await api.client.get(
        "/v1/analytics", params={"from": "2024-03-30", "to": "2024-04-01"}, headers=bearer(key)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tenant_id"] == seeded["globex"]
    expected = await brute_force(api.app.http.state.relay.db)
    assert [d["messages"] for d in body["days"]] == [
        expected[(seeded["globex"], d.isoformat())]["messages"] for d in SEEDED_DAYS
    ]
    # A tenant_id in the query changes nothing: the key decides.
    r = await api.client.get(
        "/v1/analytics",
        params={"tenant_id": seeded["acme"], "from": "2024-03-30", "to": "2024-04-01"},
        headers=bearer(key),
    )
    assert r.json()["tenant_id"] == seeded["globex"]


async def test_tenant_id_is_the_same_as_tenant(api: Api, seeded: dict[str, str]) -> None:
    days = {"from": "2024-03-30", "to": "2024-03-31"}
    for params in (
        {"tenant_id": seeded["acme"]},
        {"tenant": seeded["acme"], "tenant_id": seeded["acme"]},
    ):
        r = await api.client.get(
            "/v1/admin/analytics", params={**params, **days}, headers=admin_headers()
        )
        assert r.status_code == 200, r.text
        assert r.json()["tenant_id"] == seeded["acme"]
    both = {"tenant": seeded["acme"], "tenant_id": seeded["idle"], **days}
    assert_error(
        await api.client.get("/v1/admin/analytics", params=both, headers=admin_headers()),
        422,
        "validation_error",
    )


async def test_the_default_range_is_the_last_30_days(api: Api, seeded: dict[str, str]) -> None:
    r = await api.client.get(
        "/v1/admin/analytics", params={"tenant_id": seeded["acme"]}, headers=admin_headers()
    )
    assert r.status_code == 200, r.text
    yesterday = analytics.utc_today() - timedelta(days=1)
    assert r.json()["to"] == yesterday.isoformat()
    assert r.json()["from"] == (yesterday - timedelta(days=29)).isoformat()


async def test_who_may_read(api: Api, seeded: dict[str, str]) -> None:
    acme = seeded["acme"]
    params = {"tenant_id": acme, "from": "2024-03-30", "to": "2024-03-31"}
    assert_error(await api.client.get("/v1/admin/analytics", params=params), 401, "unauthorized")
    assert_error(await api.client.get("/v1/analytics"), 401, "unauthorized")
    key = await key_of(api, acme)
    assert_error(
        await api.client.get("/v1/admin/analytics", params=params, headers=bearer(key)),
        403,
        "forbidden",
    )
    publisher = await key_of(api, acme, scopes=["publish"])
    assert_error(await api.client.get("/v1/analytics", headers=bearer(publisher)), 403, "forbidden")
    r = await api.client.post(
        "/v1/sessions", json={"can_create_chats": True, "ttl_s": 600}, headers=bearer(key)
    )
    assert r.status_code == 201, r.text
    session = r.json()["token"]
    assert_error(await api.client.get("/v1/analytics", headers=bearer(session)), 403, "forbidden")
    unknown = {**params, "tenant_id": "01HZZZZZZZZZZZZZZZZZZZZZZZ"}
    assert_error(
        await api.client.get("/v1/admin/analytics", params=unknown, headers=admin_headers()),
        404,
        "not_found",
    )


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"from": "2024-13-01", "to": "2024-12-31"}, "from"),
        ({"from": "2024-02-30", "to": "2024-03-01"}, "not a day"),
        ({"from": "yesterday"}, "from"),
        ({"to": "20240301"}, "to"),
        ({"from": "2024-03-02", "to": "2024-03-01"}, "after"),
        ({"from": "2024-01-01", "to": "2025-01-01"}, "366"),  # 367 days
        ({"from": "2023-01-01"}, "366"),  # to: yesterday
    ],
)
async def test_bad_ranges_are_422(
    api: Api, seeded: dict[str, str], params: dict[str, str], detail: str
) -> None:
    key = await key_of(api, seeded["acme"])
    for path, headers, extra in (
        ("/v1/admin/analytics", admin_headers(), {"tenant_id": seeded["acme"]}),
        ("/v1/analytics", bearer(key), {}),
    ):
        error = assert_error(
            await api.client.get(path, params={**extra, **params}, headers=headers),
            422,
            "validation_error",
        )
        assert detail in error["detail"], error


async def test_without_a_tenant_the_operator_reads_all_tenants_added_up(
    api: Api, seeded: dict[str, str]
) -> None:
    r = await api.client.get(
        "/v1/admin/analytics",
        params={"from": "2024-03-29", "to": "2024-04-05"},
        headers=admin_headers(),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tenant_id"] is None
    assert [d["day"] for d in body["days"]] == [d.isoformat() for d in SEEDED_DAYS]
    expected = await brute_force(api.app.http.state.relay.db)
    summed = ("messages", "turns", "answered", "cancelled", "failed", "tokens_in", "tokens_out")
    summed += ("usage_reported", "usage_counted", "usage_estimated")
    totals: dict[str, dict[str, int]] = {}
    for row in body["days"]:
        tenants_rows = [f for (_, day), f in expected.items() if day == row["day"]]
        for name in summed:
            assert row[name] == sum(f[name] for f in tenants_rows), (row["day"], name)
        categories: dict[str, int] = {}
        for f in tenants_rows:
            for category, count in f["failed_by_category"].items():
                categories[category] = categories.get(category, 0) + count
        assert row["failed_by_category"] == categories
        # Percentiles do not add up across tenants: none is made up.
        assert row["first_token_p50_ms"] is row["latency_p95_ms"] is None
    for (tenant, _), f in expected.items():
        for name in summed:
            totals.setdefault(tenant, dict.fromkeys(summed, 0))[name] += f[name]
    busy = {t: v for t, v in totals.items() if any(v.values())}
    assert body["tenants_active"] == len(busy) == 3  # the idle tenant had no activity
    assert [t["tenant_id"] for t in body["tenants"]] == sorted(
        busy, key=lambda t: (-busy[t]["messages"], -busy[t]["turns"], t)
    )
    names = {tenant_id: name for name, tenant_id in seeded.items()}
    for entry in body["tenants"]:
        assert {k: entry[k] for k in summed} == busy[entry["tenant_id"]]
        assert entry["name"] == names[entry["tenant_id"]]
    # One tenant's answer has no such list.
    r = await api.client.get(
        "/v1/admin/analytics", params={"tenant_id": seeded["acme"]}, headers=admin_headers()
    )
    assert r.json()["tenants"] is None and r.json()["tenants_active"] is None


async def test_all_tenants_before_any_day_was_computed(api: Api) -> None:
    r = await api.client.get("/v1/admin/analytics", headers=admin_headers())
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["days"], body["tenants"], body["tenants_active"]) == ([], [], 0)
    assert body["aggregated_through"] is None
