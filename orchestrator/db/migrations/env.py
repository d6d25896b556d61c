"""Alembic environment: the engine comes from the caller (``orchestrator init`` or the tests)."""

from alembic import context

from orchestrator.db.models import Base

engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs table copies for ALTER
        compare_type=True,
    )
    context.run_migrations()
