"""Alembic migrations of the jobkeeper schema, shipped in the package (``jobkeeper.migrate``)."""
