"""Alembic's environment for the archive's schema: run by `dispatch.archive.migrate`.

Online only, on the connection URL the caller put in ``config.attributes["url"]`` (never
in the ini options, where a ``%`` in a password would be read as interpolation). The
migrations run in one transaction that first takes an advisory lock, so that several
engines starting at once upgrade the schema one after another, never twice.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

# Any fixed number: the lock only has to be the same for every engine.
_MIGRATION_LOCK = 0x6469_7370_6172_6368  # "disparch"

url = context.config.attributes["url"]
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=False)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        context.run_migrations()
engine.dispose()
