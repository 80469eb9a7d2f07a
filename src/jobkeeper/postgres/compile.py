"""Statements compiled once, at import, to asyncpg's ``$n`` form, and the one helper that appends
a change's event.

Every change is a single statement in autocommit mode: a write that returns the changed job rows,
as a CTE named ``changed``, followed by the ``job_events`` insert of ``with_event``. One statement
is one transaction and one round trip, so a change and its event commit together or not at all,
and no Python code reads a row and then writes it back. Status conditions and targets are taken
from ``domain.status.OPERATIONS`` (``sources``, ``target``), so a statement cannot move a job
along an edge the transition table does not have.

Building a Core statement per call cost more Python time than running it (docs/architecture.md),
hence compile once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql.compiler import SQLCompiler

from jobkeeper.domain.status import OPERATIONS, JobStatus
from jobkeeper.schema import jobs, metadata

__all__ = [
    "NOW",
    "THIS_JOB",
    "Sql",
    "changed_by",
    "compile_statement",
    "param",
    "qualify",
    "raw",
    "sources",
    "status_literals",
    "target",
    "update_job",
    "with_event",
]

NOW = sa.func.now()


@dataclass(frozen=True, slots=True)
class Sql:
    """A statement compiled for asyncpg: SQL text with ``$n`` parameters.

    ``slots`` lists, per position, the caller's parameter name or ``None`` and a constant that the
    statement carries itself (such as the ``1`` of ``version + 1``).
    """

    text: str
    slots: tuple[tuple[str | None, Any], ...]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [value if name is None else params[name] for name, value in self.slots]


_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


def compile_statement(statement: sa.ClauseElement) -> Sql:
    """A Core statement as ``Sql``; its bind parameters become the caller's named parameters."""
    compiled = statement.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    assert isinstance(compiled, SQLCompiler)
    slots = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        slots.append((name, None) if bind.required else (None, bind.effective_value))
    return Sql(str(compiled), tuple(slots))


# a reference to one of jobkeeper's tables: the bare name, not a column or alias spelled alike
# (preceded by a letter, a dot or a quote), nor inside an identifier
_TABLE = re.compile(
    r"(?<![\w.\"'$])(" + "|".join(sorted(metadata.tables, key=len, reverse=True)) + r")\b(?![\"])"
)


def qualify(text: str, schema: str) -> str:
    """``text`` with each of jobkeeper's tables named in ``schema``: statements are written
    with bare table names and run everywhere schema-qualified, so they need no ``search_path``
    (a pooler may not keep one, and an application's connection has its own)."""
    return _TABLE.sub(f'"{schema}".\\1', text)


def raw(text: str, *names: str) -> Sql:
    """A hand-written statement whose ``$1..$n`` are ``names`` in order."""
    return Sql(text, tuple((name, None) for name in names))


def param(name: str, type_: sa.types.TypeEngine[Any] | None = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


def status_literals(statuses: Sequence[JobStatus]) -> list[sa.ColumnElement[Any]]:
    """Status constants rendered inline, so each statement has a fixed text."""
    return [sa.literal_column(f"'{s.value}'") for s in statuses]


def sources(operation: str) -> str:
    """The SQL list of the statuses ``operation`` may start from: ``'queued', 'running'``."""
    return ", ".join(f"'{s.value}'" for s in sorted(OPERATIONS[operation].sources))


def target(operation: str, status: JobStatus) -> str:
    """``status`` as an SQL literal, refused at import unless ``operation`` may end there."""
    if status not in OPERATIONS[operation].targets:
        raise AssertionError(f"{operation} cannot end in {status.value}")
    return f"'{status.value}'"


THIS_JOB = (jobs.c.id == param("job_id", sa.Uuid()), jobs.c.tenant == param("tenant", sa.Text()))


def update_job(changes: Mapping[str, Any], *conditions: sa.ColumnElement[bool]) -> sa.Update:
    """``UPDATE jobs`` of one job, bumping ``version`` and ``updated_at``, returning the new row."""
    return (
        sa.update(jobs)
        .where(*THIS_JOB, *conditions)
        .values(version=jobs.c.version + 1, updated_at=NOW, **changes)
        .returning(*jobs.c)
    )


def changed_by(statement: sa.Update | sa.Insert) -> Sql:
    """A Core write that returns job rows, as the ``changed`` CTE ``with_event`` appends to."""
    inner = compile_statement(statement)
    return Sql(f"WITH changed AS ({inner.text})", inner.slots)


class _Placeholders(dict[str, str]):
    """Numbers each ``{name}`` of an event's SQL as the statement's next ``$n``."""

    def __init__(self, slots: list[tuple[str | None, Any]]) -> None:
        super().__init__()
        self._slots = slots

    def __missing__(self, name: str) -> str:
        self._slots.append((name, None))
        self[name] = f"${len(self._slots)}"
        return self[name]


def with_event(ctes: Sql, event_type: str, event_data: str, *, select: str = "changed.*") -> Sql:
    """Append one ``job_events`` row per row of the ``changed`` CTE that ``ctes`` ends with, and
    select ``select`` from ``changed``.

    ``event_type`` and ``event_data`` are SQL expressions over ``changed``; a ``{name}`` in them
    is a further parameter of the statement. The event's ``seq`` is the job's new ``version``:
    one change, one version, one event.
    """
    slots = list(ctes.slots)
    names = _Placeholders(slots)
    kind, data = event_type.format_map(names), event_data.format_map(names)
    text = f"""{ctes.text}, recorded AS (
    INSERT INTO job_events (job_id, seq, type, data, at)
    SELECT changed.id, changed.version, {kind}, {data}, changed.updated_at FROM changed
) SELECT {select} FROM changed"""
    return Sql(text, tuple(slots))
