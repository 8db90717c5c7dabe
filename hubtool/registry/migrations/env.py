"""Alembic environment for the catalog. Migrations run programmatically (hubtool.registry.migrate):
the caller hands over an open connection, already inside the transaction that holds the write lock."""

from alembic import context

from hubtool.registry.tables import metadata

connection = context.config.attributes["connection"]
# render_as_batch: SQLite can't ALTER most things in place; batch mode copies the table instead.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
