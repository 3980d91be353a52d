"""Alembic environment: always runs on a connection handed in by backend.db.migrate."""

from alembic import context

from backend.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through backend.db.migrate.upgrade(), which supplies the connection")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
context.run_migrations()
