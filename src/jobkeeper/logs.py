"""Logging for the processes jobkeeper runs (``jobkeeper serve``/``worker``), never at import.

``configure_logging("json")`` writes one JSON object per line with the current request id and job
id (context variables set by the HTTP middleware and the worker), so logs join up with responses'
``X-Request-ID`` and with jobs.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

__all__ = ["configure_logging", "job_id_var", "request_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("jobkeeper_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("jobkeeper_job_id", default=None)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
            "job_id": job_id_var.get(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in entry.items() if v is not None})


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request, job = request_id_var.get(), job_id_var.get()
        if request and job:
            return f"{line} [request={request} job={job}]"
        if request or job:  # one of them (every access log line of the API: a request id)
            return f"{line} [request={request}]" if request else f"{line} [job={job}]"
        return line


def configure_logging(style: Literal["text", "json"] = "text", level: str = "INFO") -> None:
    """Send jobkeeper's (and everyone's) logs to stderr in ``style``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter()
        if style == "json"
        else _TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
