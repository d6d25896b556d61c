"""Storage: SQLAlchemy models, engine and session helpers, Alembic migrations."""

from orchestrator.db.engine import create_db_engine, migrate, session_scope
from orchestrator.db.models import Base

__all__ = ["Base", "create_db_engine", "migrate", "session_scope"]
