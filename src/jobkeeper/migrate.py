"""Schema migrations as a library API (Alembic underneath); the CLI and test fixtures use these.

The functions are synchronous because Alembic's environment runs its own event loop; from async code
call them with ``await asyncio.to_thread(upgrade, url)``.
"""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config

from jobkeeper.settings import sqlalchemy_url

__all__ = ["alembic_config", "check", "downgrade", "upgrade"]


def alembic_config(database_url: str) -> Config:
    """An Alembic ``Config`` for the packaged migrations against ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(files("jobkeeper") / "migrations"))
    # configparser interpolation: a literal % in a password must be doubled
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head", *, sql: bool = False) -> None:
    """Migrate up to ``revision``; with ``sql=True`` print the SQL instead of running it."""
    command.upgrade(alembic_config(database_url), revision, sql=sql)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Migrate down to ``revision`` (``base`` removes every jobkeeper table)."""
    command.downgrade(alembic_config(database_url), revision)


def check(database_url: str) -> None:
    """Raise if the migrated database differs from ``jobkeeper.schema`` (Alembic autogenerate)."""
    command.check(alembic_config(database_url))
