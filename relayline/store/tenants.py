"""Tenants and their API keys."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relayline import api_keys
from relayline.clock import now_ms
from relayline.errors import NotFound
from relayline.ids import new_id
from relayline.store.models import ApiKey, Tenant

# last_used_at is advisory; writing it on every request would turn reads into writes.
LAST_USED_RESOLUTION_MS = 60_000


async def create_tenant(session: AsyncSession, name: str) -> Tenant:
    tenant = Tenant(id=new_id(), name=name, disabled=False, agent_settings={}, created_at=now_ms())
    session.add(tenant)
    await session.flush()
    return tenant


async def list_tenants(session: AsyncSession, after: str | None, limit: int) -> Sequence[Tenant]:
    query = select(Tenant).order_by(Tenant.id).limit(limit)
    if after:
        query = query.where(Tenant.id > after)
    return (await session.scalars(query)).all()


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant:
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("tenant not found")
    return tenant


async def set_disabled(session: AsyncSession, tenant_id: str, disabled: bool) -> Tenant:
    tenant = await get_tenant(session, tenant_id)
    tenant.disabled = disabled
    await session.flush()
    return tenant


async def create_key(
    session: AsyncSession, tenant_id: str, scopes: list[str], name: str | None
) -> tuple[ApiKey, str]:
    """Create a key; the clear key is returned here and never again."""
    await get_tenant(session, tenant_id)
    new = api_keys.generate()
    row = ApiKey(
        id=new_id(),
        tenant_id=tenant_id,
        prefix=new.prefix,
        key_hash=new.key_hash,
        name=name,
        scopes=sorted(scopes),
        created_at=now_ms(),
    )
    session.add(row)
    await session.flush()
    return row, new.key


async def list_keys(session: AsyncSession, tenant_id: str) -> Sequence[ApiKey]:
    await get_tenant(session, tenant_id)
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.id)
    return (await session.scalars(query)).all()


async def revoke_key(session: AsyncSession, key_id: str) -> ApiKey:
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound("key not found")
    if row.revoked_at is None:
        row.revoked_at = now_ms()
        await session.flush()
    return row


async def find_key(session: AsyncSession, key: str) -> tuple[ApiKey, Tenant] | None:
    """The live key and its enabled tenant for a clear key, or None."""
    prefix = api_keys.prefix_of(key)
    if prefix is None:
        return None
    row = (await session.scalars(select(ApiKey).where(ApiKey.prefix == prefix))).first()
    if row is None or row.revoked_at is not None or not api_keys.matches(key, row.key_hash):
        return None
    tenant = await session.get(Tenant, row.tenant_id)
    if tenant is None or tenant.disabled:
        return None
    return row, tenant


async def touch_key(session: AsyncSession, key_id: str, now: int) -> None:
    await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .where(
            (ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < now - LAST_USED_RESOLUTION_MS)
        )
        .values(last_used_at=now)
    )


async def still_valid(
    session: AsyncSession, key_ids: Collection[str], tenant_ids: Collection[str]
) -> tuple[set[str], set[str]]:
    """Of ``key_ids``, the keys neither revoked nor of a disabled tenant; of ``tenant_ids``, the
    tenants still enabled. One query per family, whatever the number of ids."""
    keys: set[str] = set()
    enabled: set[str] = set()
    if key_ids:
        query = (
            select(ApiKey.id)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.id.in_(list(key_ids)))
            .where(ApiKey.revoked_at.is_(None))
            .where(Tenant.disabled.is_(False))
        )
        keys = set((await session.scalars(query)).all())
    if tenant_ids:
        query_t = (
            select(Tenant.id)
            .where(Tenant.id.in_(list(tenant_ids)))
            .where(Tenant.disabled.is_(False))
        )
        enabled = set((await session.scalars(query_t)).all())
    return keys, enabled
