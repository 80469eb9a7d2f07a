"""Reading a job's event stream across connections, without I/O: the Server-Sent Events lines
of each connection in, ``JobEvent``s out, and what to do when a connection drops.

One ``Resume`` follows one ``events()`` iteration. Each connection asks for the events after the
last one received (``Last-Event-ID``), so a dropped connection loses and repeats nothing. The
iteration ends after the terminal event, or when the server answers 204 (the job finished at or
before the resume point). A connection that fails, or ends before the terminal event, is retried
after a backoff, ``Reconnect.attempts`` times in a row at most; an event received starts the count
again. 503 ``database_unavailable`` is retried the same way; any other problem is raised at once.
"""

from __future__ import annotations

import random

import httpx
from pydantic import TypeAdapter

from jobkeeper.client.calls import Call, JobRef, job_id_of, job_path
from jobkeeper.client.errors import ApiConnectionError, connection_error
from jobkeeper.client.target import Reconnect
from jobkeeper.domain.status import TERMINAL_EVENTS
from jobkeeper.domain.values import JobEvent
from jobkeeper.errors import DatabaseUnavailable

__all__ = ["RETRIED", "Resume"]

# the errors of one connection that a reconnect may cure
RETRIED = (httpx.TransportError, DatabaseUnavailable)
# the ``data`` of each event: what ``GET /jobs/{id}/events`` writes from a ``JobEvent``
_EVENT = TypeAdapter(JobEvent)


class Resume:
    """The state of one event iteration: the last sequence number received, the failures in a
    row, the event being read."""

    def __init__(self, job: JobRef, after: int, reconnect: Reconnect) -> None:
        self.job_id = job_id_of(job)
        self.last = after
        self.finished = False
        self._reconnect = reconnect
        self._failures = 0
        self._data: list[str] = []

    def call(self) -> Call[bool]:
        """The request of the next connection; its outcome tells whether events follow (200)
        or the job already finished before them (204)."""
        self._data = []  # a half-read event of a dropped connection comes again
        headers = {"Last-Event-ID": str(self.last)} if self.last else {}
        return Call(
            "GET",
            job_path(self.job_id, "/events"),
            self._opened,
            frozenset({200, 204}),
            self.job_id,
            headers=headers,
        )

    def _opened(self, response: httpx.Response) -> bool:
        self.finished = response.status_code == 204
        return not self.finished

    def line(self, line: str) -> JobEvent | None:
        """Read one line of the stream; returns the event it completes, if any."""
        if line.startswith(":"):  # a comment: the server's ping
            return None
        if line:
            name, _, value = line.partition(":")
            if name == "data":
                self._data.append(value.removeprefix(" "))
            return None  # ``id`` and ``event`` repeat the data's ``seq`` and ``type``
        if not self._data:
            return None
        event = _EVENT.validate_json("\n".join(self._data))
        self._data = []
        self.last = event.seq
        self.finished = event.type in TERMINAL_EVENTS
        self._failures = 0
        return event

    def dropped(self, request: httpx.Request, error: Exception | None) -> float:
        """The pause before reconnecting after a connection failed with ``error`` (one of
        ``RETRIED``) or ended early (``None``); raises once the attempts are spent."""
        self._failures += 1
        if self._failures > self._reconnect.attempts:
            if isinstance(error, httpx.TransportError):
                raise connection_error(request, error) from error
            if error is not None:
                raise error
            raise ApiConnectionError(
                request.method,
                str(request.url),
                f"the event stream ended {self._failures} times before a terminal event",
            )
        return self._reconnect.pause(self._failures, random.random())
