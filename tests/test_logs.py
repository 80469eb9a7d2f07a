"""``configure_logging``'s text lines end with the request id and job id in context, if any."""

from __future__ import annotations

import logging

import pytest

from jobkeeper.logs import configure_logging, job_id_var, request_id_var


@pytest.mark.parametrize(
    ("request_id", "job_id", "tail"),
    [
        ("r-1", "j-1", "hello [request=r-1 job=j-1]"),
        ("r-1", None, "hello [request=r-1]"),
        (None, "j-1", "hello [job=j-1]"),
        (None, None, "hello"),
    ],
)
def test_a_text_line_names_the_request_and_job_in_context(
    request_id: str | None, job_id: str | None, tail: str
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("text")
        (handler,) = root.handlers
        record = logging.LogRecord("jobkeeper.test", logging.INFO, __file__, 1, "hello", (), None)
        request_token, job_token = request_id_var.set(request_id), job_id_var.set(job_id)
        try:
            line = handler.format(record)
        finally:
            request_id_var.reset(request_token)
            job_id_var.reset(job_token)
        assert line.endswith(f" INFO jobkeeper.test {tail}")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
