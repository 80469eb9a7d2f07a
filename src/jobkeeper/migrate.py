"""Schema migrations as a library API (Alembic underneath); the CLI and test fixtures use these,
and so can an application's own Alembic revision.

jobkeeper's tables, indexes and version table (``jobkeeper_alembic_version``) live in one
Postgres schema (``jobkeeper`` by default), so they share an application's database without
touching its tables or its ``alembic_version``. Two ways to migrate:

* on its own: ``upgrade(url, schema=...)`` or ``jobkeeper migrate --schema ...``;
* inside the application's ``alembic upgrade head``: a revision of the application calls
  ``upgrade(op.get_bind(), "0002", schema=...)``, so jobkeeper's schema moves with the
  application's history, in its transaction (docs/embedding.md shows the recipe). The
  application's ``env.py`` passes ``include_name``/``include_object`` to
  ``context.configure`` so its autogenerate and ``alembic check`` leave jobkeeper's schema alone.

The functions are synchronous because Alembic's environment runs its own event loop; from async
code call them with ``await asyncio.to_thread(upgrade, url)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from importlib.resources import files
from typing import Any, Literal

import alembic.context
import alembic.op
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from jobkeeper.domain.validate import DEFAULT_SCHEMA, validate_schema
from jobkeeper.schema import VERSION_TABLE
from jobkeeper.settings import sqlalchemy_url

__all__ = [
    "alembic_config",
    "check",
    "downgrade",
    "include_name",
    "include_object",
    "upgrade",
]

Target = str | Connection


def alembic_config(target: Target, *, schema: str = DEFAULT_SCHEMA) -> Config:
    """An Alembic ``Config`` for the packaged migrations against ``target`` (a database URL,
    or an open SQLAlchemy ``Connection``), for the tables in ``schema``."""
    config = Config()
    config.set_main_option("script_location", str(files("jobkeeper") / "migrations"))
    config.attributes["schema"] = validate_schema(schema)
    if isinstance(target, Connection):
        config.attributes["connection"] = target
    else:
        # configparser interpolation: a literal % in a password must be doubled
        config.set_main_option("sqlalchemy.url", sqlalchemy_url(target).replace("%", "%%"))
    return config


@contextlib.contextmanager
def _callers_alembic_kept() -> Iterator[None]:
    """Run Alembic inside an application's running revision: Alembic installs its ``op`` and
    ``context`` proxies for the run and removes them after, which would leave the revision that
    called us without its own; put those back."""
    saved = [vars(module).get("_proxy") for module in (alembic.op, alembic.context)]
    try:
        yield
    finally:
        for proxy in saved:
            if proxy is not None:
                proxy._install_proxy()


def upgrade(
    target: Target, revision: str = "head", *, schema: str = DEFAULT_SCHEMA, sql: bool = False
) -> None:
    """Migrate jobkeeper's tables in ``schema`` up to ``revision``.

    ``target`` is a database URL, or an open SQLAlchemy ``Connection`` (``op.get_bind()`` in an
    application's revision), whose transaction it then runs in. With ``sql=True`` (URL only) the
    SQL is printed instead of run.
    """
    with _callers_alembic_kept():
        command.upgrade(alembic_config(target, schema=schema), revision, sql=sql)


def downgrade(target: Target, revision: str = "base", *, schema: str = DEFAULT_SCHEMA) -> None:
    """Migrate down to ``revision`` (``base`` removes every jobkeeper table; the schema stays)."""
    with _callers_alembic_kept():
        command.downgrade(alembic_config(target, schema=schema), revision)


def check(target: Target, *, schema: str = DEFAULT_SCHEMA) -> None:
    """Raise if the migrated tables differ from ``jobkeeper.schema`` (Alembic autogenerate)."""
    with _callers_alembic_kept():
        command.check(alembic_config(target, schema=schema))


def include_name(
    name: str | None,
    type_: Literal[
        "schema", "table", "column", "index", "unique_constraint", "foreign_key_constraint"
    ],
    parent_names: MutableMapping[
        Literal["schema_name", "table_name", "schema_qualified_table_name"], str | None
    ],
    *,
    schema: str = DEFAULT_SCHEMA,
) -> bool:
    """For an application's ``context.configure(include_name=...)``: leave jobkeeper's schema
    and version table out of its autogenerate and ``alembic check``. For another schema than
    the default, pass ``functools.partial(include_name, schema=...)``."""
    if type_ == "schema":
        return name != schema
    if type_ == "table":
        return name != VERSION_TABLE and parent_names.get("schema_name") != schema
    return True


def include_object(
    obj: Any,
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: Any,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> bool:
    """For an application's ``context.configure(include_object=...)``: the same filter on
    objects (a table of jobkeeper's schema, or its version table, is never the application's)."""
    if type_ == "table":
        return name != VERSION_TABLE and getattr(obj, "schema", None) != schema
    return True
