"""Alembic environment: runs on the connection handed in by ``relayline.store.migrate``."""

from __future__ import annotations

from alembic import context

from relayline.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through relayline.store.migrate
    raise RuntimeError("run migrations with `relayline migrate`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
