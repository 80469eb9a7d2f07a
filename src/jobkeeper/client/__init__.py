"""A typed client of the jobkeeper HTTP API, for services that talk to one: ``AsyncJobClient``
(asyncio) and ``JobClient`` (blocking), both on httpx.

Jobs, questions and schedules come back as the API's own models (``JobOut``, ``JobPageOut``,
``QuestionOut``, ``InboxPageOut``, ``ScheduleOut``; events as ``JobEvent``), and problems as
jobkeeper's errors (``JobNotFound``, ``QueueFull``...; ``ApiError`` and ``ApiConnectionError``
for the rest). Importing it starts nothing. See ``docs/client.md``.
"""

from jobkeeper.api.inbox import InboxPageOut, QuestionOut
from jobkeeper.api.schedules import ScheduleOut
from jobkeeper.api.schemas import JobOut, JobPageOut, SubmittedOut
from jobkeeper.client.asynchronous import AsyncJobClient
from jobkeeper.client.calls import (
    InboxFilters,
    InboxQuery,
    JobRef,
    ListFilters,
    ListQuery,
    ScheduleOptions,
    ScheduleRef,
    SubmitOptions,
)
from jobkeeper.client.errors import UNKNOWN, ApiConnectionError, ApiError
from jobkeeper.client.sync import JobClient
from jobkeeper.client.target import ClientOptions
from jobkeeper.domain.batch import JobSpec
from jobkeeper.domain.values import JobEvent

__all__ = [
    "UNKNOWN",
    "ApiConnectionError",
    "ApiError",
    "AsyncJobClient",
    "ClientOptions",
    "InboxFilters",
    "InboxPageOut",
    "InboxQuery",
    "JobClient",
    "JobEvent",
    "JobOut",
    "JobPageOut",
    "JobRef",
    "JobSpec",
    "ListFilters",
    "ListQuery",
    "QuestionOut",
    "ScheduleOptions",
    "ScheduleOut",
    "ScheduleRef",
    "SubmitOptions",
    "SubmittedOut",
]
