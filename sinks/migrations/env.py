"""Alembic environment: migrate the engine handed over by sinks.migrations.run_migrations."""

from __future__ import annotations

from alembic import context

from sinks.tables import metadata

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    # render_as_batch lets later migrations alter columns on SQLite, which lacks ALTER COLUMN.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
