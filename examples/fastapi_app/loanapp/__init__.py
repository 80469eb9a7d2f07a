"""A small loan office: the kind of FastAPI + SQLAlchemy + Alembic application jobkeeper
embeds into (docs/embedding.md walks through it)."""
