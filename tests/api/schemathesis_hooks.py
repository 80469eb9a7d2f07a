"""Hooks of the live ``st run`` in ``test_schema.py`` (loaded through ``SCHEMATHESIS_HOOKS``): what
the run must know about this API that its OpenAPI schema cannot say."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import requests
import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

EVENTS = "/jobs/{job_id}/events"
# what a schedule's JSON Schema cannot check: cron syntax, the IANA zone names, one of the two
SCHEDULE_DEFINITION = {"cron", "timezone", "every"}


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    """Finish a job before its events are streamed: no worker runs here, and the stream of a live
    job only ends with the job, so it would hold the run until ``--request-timeout``."""
    if case.operation.path != EVENTS:
        return
    headers = {name.lower(): value for name, value in (case.headers or {}).items()}
    job_id = (case.path_parameters or {}).get("job_id")
    if "authorization" in headers and isinstance(job_id, str):
        requests.post(
            f"{case.operation.base_url.rstrip('/')}/jobs/{quote(job_id, safe='')}/cancel",
            headers={"Authorization": headers["authorization"]},
            timeout=kwargs.get("timeout") or 5,
        )


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Any,
    case: schemathesis.Case,
    response: schemathesis.Response,
) -> bool:
    """Keep every failure except refusals of a schema-valid submit that JSON Schema cannot
    describe (``test_jobs.py`` and ``test_batch.py`` cover them):

    - an ``Idempotency-Key`` used before for another body: 422 ``idempotency_key_reused``, as the
      Idempotency-Key draft says (a batch item's ``idempotency_key`` alike);
    - two items of one batch with the same ``idempotency_key`` and different jobs: 422
      ``validation_error`` for the later item's ``idempotency_key``;
    - a ``run_after`` outside Python's datetimes once in UTC (``9999-12-31T23:00-05:00``): 422
      ``validation_error`` for the field; the schema says so in words, since ``format: date-time``
      has no bounds;
    - a schedule whose ``cron`` is no cron expression, whose ``timezone`` is no IANA zone, or
      that has both or neither of ``cron`` and ``every_seconds`` (``test_schedules.py``);
    - a schedule operation on the ``schedule_id`` of a job no schedule submitted: the stateful
      phase links a job's ``schedule_id`` to ``/schedules/{schedule_id}``, and for most jobs it
      is null (sent as ``None``, not a UUID).
    """
    if not isinstance(failure, RejectedPositiveData):
        return True
    problem = _problem(response)
    if problem.get("code") == "idempotency_key_reused":
        return False
    if problem.get("field") == "idempotency_key" and "index" in problem:
        return False
    if case.operation.path == "/schedules" and problem.get("field") in SCHEDULE_DEFINITION:
        return False
    path = case.path_parameters or {}
    if "schedule_id" in path and path["schedule_id"] in (None, "None"):
        return problem.get("field") != "schedule_id"
    return not (
        problem.get("field") == "run_after" and "out of range" in str(problem.get("detail"))
    )


def _problem(response: schemathesis.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
