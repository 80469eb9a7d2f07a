"""What the benchmark scripts (``bench_*.py``) share: the Postgres server and its scratch
databases, the ``--write``/``--quick`` options, the report's machine lines, nearest-rank
quantiles, a process's CPU time, and writing a report section into ``docs/benchmarks.md``.

The scripts start themselves again as child processes (``--role ...``), which import this module
too; ``bench_coherence.py`` weighs such a child's memory. So importing it loads nothing a child
does not load anyway: jobkeeper's test helpers, migrations and embedded server (pytest, alembic,
pgserver) are imported by the functions of ``systems/jobkeeper.py`` that use them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from systems.jobkeeper import (
    asyncpg_dsn,
    create_database,
    drop_database,
    embedded_server,
    migrate_to_head,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
URL_ENV = "JOBKEEPER_DATABASE_URL"
READ_PATH_PACKAGES = ("SQLAlchemy", "asyncpg", "cachetools")
CLK_TCK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")
LoadAverage = tuple[float, float, float]


# --- the server and scratch databases ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    description: str  # for the report


@contextmanager
def postgres_server() -> Iterator[Server]:
    """``JOBKEEPER_DATABASE_URL`` when set, else an embedded Postgres (pgserver) that is stopped
    on the way out."""
    configured = os.environ.get(URL_ENV)
    if configured:
        parts = urlsplit(asyncpg_dsn(configured))
        where = f"{parts.hostname or 'local socket'}:{parts.port or 5432}"
        yield Server(configured, f"configured (`{URL_ENV}`, {where})")
        return
    with embedded_server("bench-pg") as url:
        yield Server(url, "embedded (pgserver, Unix socket)")


@asynccontextmanager
async def scratch(server_url: str, label: str, *, migrate: bool = True) -> AsyncIterator[str]:
    """A fresh database, migrated to head unless ``migrate`` is false; dropped on the way out,
    even on error."""
    name = f"jobkeeper_bench_{label}_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_url, name)
    try:
        if migrate:
            await migrate_to_head(url)
        yield url
    finally:
        await drop_database(server_url, name)


# --- measuring ---------------------------------------------------------------------------------


def nearest_rank(ordered: Sequence[T], q: float) -> T:
    """The nearest-rank ``q`` quantile of sorted, non-empty values."""
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``; 0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- the report --------------------------------------------------------------------------------


def _meminfo_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown model"


def machine(server: str, postgres: str, packages: Sequence[str] = READ_PATH_PACKAGES) -> list[str]:
    """The machine, Python and ``packages`` with their versions, Postgres and the server."""
    versions = ", ".join(f"{name} {package_version(name)}" for name in packages)
    return [
        f"CPU: {platform.processor() or platform.machine()} ({_cpu_model()}), "
        f"{os.cpu_count()} logical CPUs; memory: {_meminfo_gib()}",
        f"Python {platform.python_version()} ({platform.python_implementation()}, "
        f"{platform.system()} {platform.release()}); {versions}",
        f"Postgres: {postgres}",
        f"Server: {server}",
    ]


def load_average(start: LoadAverage, end: LoadAverage) -> str:
    """The machine's load averages (``os.getloadavg()``) at the start and the end of a run."""
    return (
        f"Load average (1/5/15 min): {start[0]:.2f}/{start[1]:.2f}/{start[2]:.2f} at the start, "
        f"{end[0]:.2f}/{end[1]:.2f}/{end[2]:.2f} at the end"
    )


def status(ok: bool) -> str:
    """A target's verdict as the reports print it."""
    return "**PASS**" if ok else "**FAIL**"


def _line(marker: str) -> re.Pattern[str]:
    """``marker`` alone on a line."""
    return re.compile(rf"^{re.escape(marker)}[ \t]*$", re.MULTILINE)


def write_section(doc: Path, name: str, section: str) -> None:
    """Replace the lines from ``<!-- name:start -->`` to ``<!-- name:end -->`` in ``doc`` (each
    alone on its line, so prose that mentions them is left alone); append both if missing."""
    start_marker, end_marker = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start_marker}\n{section}{end_marker}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start = _line(start_marker).search(text)
    end = None if start is None else _line(end_marker).search(text, start.end())
    if start is None or end is None:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = text[: start.start()] + block + text[end.end() :]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


# --- entry point -------------------------------------------------------------------------------


def arguments(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with ``--write`` and ``--quick`` (whose
    help is ``quick``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--write", action="store_true", help=f"update {DOC.name} between markers")
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def publish(name: str, section: str, *, write: bool) -> None:
    """Print a benchmark's report section; with ``write``, also put it into ``docs/benchmarks.md``
    between the benchmark's markers (``name`` is the benchmark's, e.g. ``bench_read_path``)."""
    print(section)
    if write:
        write_section(DOC, name, section)
        sys.stderr.write(f"wrote {DOC}\n")
