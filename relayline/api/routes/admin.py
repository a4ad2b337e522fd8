"""Operator API: tenants and their keys (admin key)."""

from __future__ import annotations

from fastapi import APIRouter

from relayline.api import schemas as s
from relayline.api.deps import Admin, State, page_size
from relayline.api.params import AfterId, IdPath, Limit
from relayline.api_keys import SCOPES
from relayline.store import tenants

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/tenants", status_code=201)
async def create_tenant(body: s.TenantIn, _: Admin, st: State) -> s.TenantOut:
    async with st.db.write() as session:
        return s.TenantOut.of(await tenants.create_tenant(session, body.name))


@router.get("/tenants")
async def list_tenants(
    _: Admin,
    st: State,
    after: AfterId = None,
    limit: Limit = None,
) -> s.TenantList:
    limit = page_size(limit, st.settings.max_page_size)
    async with st.db.read() as session:
        rows = await tenants.list_tenants(session, after, limit)
    return s.TenantList(
        items=[s.TenantOut.of(r) for r in rows],
        next_after=rows[-1].id if len(rows) == limit else None,
    )


@router.post("/tenants/{tenant_id}/disable")
async def disable_tenant(tenant_id: IdPath, _: Admin, st: State) -> s.TenantOut:
    async with st.db.write() as session:
        row = await tenants.set_disabled(session, tenant_id, True)
    await st.credentials.tenant_disabled(tenant_id)
    return s.TenantOut.of(row)


@router.post("/tenants/{tenant_id}/enable")
async def enable_tenant(tenant_id: IdPath, _: Admin, st: State) -> s.TenantOut:
    async with st.db.write() as session:
        row = await tenants.set_disabled(session, tenant_id, False)
    await st.credentials.tenant_enabled(tenant_id)
    return s.TenantOut.of(row)


@router.post("/tenants/{tenant_id}/keys", status_code=201)
async def create_key(tenant_id: IdPath, body: s.KeyIn, _: Admin, st: State) -> s.NewKeyOut:
    scopes: list[str] = sorted(set(body.scopes)) if body.scopes else sorted(SCOPES)
    async with st.db.write() as session:
        row, key = await tenants.create_key(session, tenant_id, scopes, body.name)
    return s.NewKeyOut(**s.KeyOut.of(row).model_dump(), key=key)


@router.get("/tenants/{tenant_id}/keys")
async def list_keys(tenant_id: IdPath, _: Admin, st: State) -> s.KeyList:
    async with st.db.read() as session:
        rows = await tenants.list_keys(session, tenant_id)
    return s.KeyList(items=[s.KeyOut.of(r) for r in rows])


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: IdPath, _: Admin, st: State) -> s.KeyOut:
    async with st.db.write() as session:
        row = await tenants.revoke_key(session, key_id)
    # Ends the live connections that use it, here and (broadcast) on every other instance.
    await st.credentials.key_revoked(key_id)
    return s.KeyOut.of(row)
