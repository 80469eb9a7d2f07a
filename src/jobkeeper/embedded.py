"""An embedded PostgreSQL for the demo and the tests when no database is configured.

It uses ``pgserver`` (the ``jobkeeper[embedded]`` extra), which bundles PostgreSQL 16 binaries and
listens on a Unix socket only, so it never clashes with a system server on port 5432. As root,
pgserver creates a ``pgserver`` system user and opens read access on every parent of the data
directory, so the data directory lives under ``/var/tmp`` (never under ``/root``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres", "default_data_dir"]


@contextmanager
def _quiet() -> Iterator[None]:
    # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset (as under CI); harmless here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        yield


def default_data_dir(name: str) -> Path:
    """A per-user data directory under ``/var/tmp`` (or the temp dir where that is missing)."""
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
    return base / f"jobkeeper-{name}-{os.getuid()}"


class EmbeddedPostgres:
    """A running embedded server; ``url(database)`` gives a ``postgresql://`` URL for it."""

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        try:
            with _quiet():
                import pgserver
        except ImportError as exc:
            raise RuntimeError(
                "no database configured and the embedded Postgres is not installed: "
                "set JOBKEEPER_DATABASE_URL or `pip install 'jobkeeper[embedded]'`"
            ) from exc
        data_dir.mkdir(parents=True, exist_ok=True)
        with _quiet():
            self._server: Any = pgserver.get_server(
                data_dir, cleanup_mode="delete" if delete_on_stop else "stop"
            )

    def url(self, database: str = "postgres") -> str:
        with _quiet():
            return str(self._server.get_uri(database))

    def stop(self) -> None:
        with _quiet():
            self._server.cleanup()
