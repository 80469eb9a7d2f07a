"""The app against its own OpenAPI schema, with schemathesis: generated requests (valid and
invalid) to every operation never cause a 5xx, every error is a problem document, and responses
conform to the schema (status codes, content types, headers, bodies).

Two runs. The first only generates and checks here: requests go through httpx to the in-process
app whose lifespan runs on the test's event loop (the app's own ASGI client would run it on another
loop), aimed at real jobs of the caller. The second is ``st run`` against a live ``jobkeeper
serve``, as anyone would fuzz the service: every phase (examples, coverage, fuzzing, and stateful
sequences through the schema's links) and every check, bounded by ``LIVE_EXAMPLES``;
``schemathesis_hooks.py`` tells it what the schema cannot. Reproduce a failure with the command and
``Seed`` it prints (``st run --seed N ...`` with ``SCHEMATHESIS_HOOKS`` set).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobkeeper.api.app import create_app
from jobkeeper.manager import JobManager

from .support import (
    BIN,
    DEADLINE,
    IDLE_KIND,
    PROBLEM_JSON,
    Processes,
    assert_problem,
    make_settings,
)

# the schema as the app publishes it (built without a database: create_app does no I/O)
SPEC: dict[str, Any] = create_app(make_settings("postgresql://unused@127.0.0.1/unused")).openapi()
SCHEMA = schemathesis.openapi.from_dict(SPEC)
OPERATIONS = [(method.upper(), path) for path, ops in SPEC["paths"].items() for method in ops]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 15
LIVE_EXAMPLES = 100  # per operation and phase: about 20 s on two cores
LIVE_DEADLINE = 90.0
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


async def test_the_app_serves_the_schema_that_is_fuzzed(api: httpx.AsyncClient) -> None:
    response = await api.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == SPEC


def _transport_kwargs(case: Any) -> dict[str, Any]:
    """The case as httpx ``request()`` arguments."""
    raw: dict[str, Any] = case.as_transport_kwargs(base_url="http://test")
    kwargs: dict[str, Any] = {
        "method": raw["method"],
        "url": raw["url"],
        "params": raw.get("params") or None,
        "headers": raw.get("headers") or {},
        "cookies": raw.get("cookies") or None,
    }
    if "json" in raw:
        kwargs["json"] = raw["json"]
    elif raw.get("data") is not None:
        data = raw["data"]
        kwargs["content" if isinstance(data, bytes | str) else "data"] = data
    return kwargs


def _as_caller(api: httpx.AsyncClient, kwargs: dict[str, Any]) -> httpx.Request:
    """The case's request with the test's own key where the case sends a bearer token (the
    schema declares the scheme, so schemathesis makes one up), and with none where it left the
    header out to test that the operation refuses it."""
    request = api.build_request(**kwargs)
    sent = {name.lower() for name in kwargs["headers"]}
    if "authorization" not in sent:
        del request.headers["authorization"]
    elif kwargs["headers"].get("Authorization", "").lower().startswith("bearer "):
        request.headers["authorization"] = api.headers["authorization"]
    return request


def _assert_problem_if_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.text
    assert response.headers.get("x-request-id")
    body = response.json()
    assert isinstance(body.get("code"), str) and body["status"] == response.status_code, body


def _error_content_types(method: str, path: str) -> dict[str, set[str]]:
    responses = SPEC["paths"][path][method.lower()]["responses"]
    return {
        status: set(response.get("content", {}))
        for status, response in responses.items()
        if status[0] in "45" and response.get("content")
    }


MISDOCUMENTED_ERRORS = {  # (method, path, status) documented as something else than a problem
    (method, path, status)
    for method, path in OPERATIONS
    for status, types in _error_content_types(method, path).items()
    if PROBLEM_JSON not in types
}


def _can_be_invalid(method: str, path: str) -> bool:
    """Whether schemathesis can make an invalid request (a body or a query parameter)."""
    operation = SPEC["paths"][path][method.lower()]
    return "requestBody" in operation or any(
        parameter["in"] == "query" for parameter in operation.get("parameters", [])
    )


FUZZED = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _can_be_invalid(method, path)
]


@pytest.mark.parametrize(("method", "path", "mode"), FUZZED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
async def test_generated_requests_conform_to_the_schema(
    api: httpx.AsyncClient,
    job_manager: JobManager,
    tenant: str,
    method: str,
    path: str,
    mode: GenerationMode,
    data: st.DataObject,
) -> None:
    operation = SCHEMA[path][method]
    case = data.draw(operation.as_strategy(generation_mode=mode), label="case")
    if "job_id" in (case.path_parameters or {}) and mode is GenerationMode.POSITIVE:
        # aim some requests at real jobs of the caller's tenant, not only at unknown ids
        target = data.draw(st.sampled_from([None, "queued", "finished"]), label="target")
        if path.endswith("/events") and target is not None:
            target = "finished"  # a finished job's stream ends; start it before the end
            case.query = {"after": data.draw(st.sampled_from([0, 1]), label="after")}
            for name in [h for h in case.headers or {} if h.lower() == "last-event-id"]:
                del case.headers[name]
        if target is not None:
            job = await job_manager.submit(tenant, IDLE_KIND, {"for": "schemathesis"})
            if target == "finished":
                await job_manager.cancel(job.id, tenant=tenant)
            case.path_parameters = {**case.path_parameters, "job_id": str(job.id)}

    kwargs = _transport_kwargs(case)
    response = await asyncio.wait_for(api.send(_as_caller(api, kwargs)), DEADLINE)

    _assert_problem_if_error(response)
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    case.validate_response(response, checks=checks, headers=kwargs["headers"])


async def test_schemathesis_with_every_check_and_stateful_links_finds_nothing(
    processes: Processes, api_key: str, tmp_path: Path
) -> None:
    base = await processes.serve("api")
    command = [
        *(str(BIN / "st"), "run", f"{base}/openapi.json", "--checks", "all"),
        *("--header", f"Authorization: Bearer {api_key}"),
        *("--max-examples", str(LIVE_EXAMPLES), "--request-timeout", "5", "--workers", "1"),
        "--no-color",
    ]
    run = await asyncio.to_thread(
        subprocess.run,
        command,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        cwd=tmp_path,  # its cache directory
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=LIVE_DEADLINE,
        check=False,
    )
    assert run.returncode == 0, run.stdout.replace(api_key, "<api key>")
    assert "API Links:" in run.stdout, run.stdout  # the stateful phase ran


# --- contract mismatches schemathesis found once --------------------------------------------------


def test_every_documented_error_response_is_a_problem() -> None:
    assert sorted(MISDOCUMENTED_ERRORS) == []


async def test_a_422_is_a_problem_as_documented(api: httpx.AsyncClient) -> None:
    """A validation error of a query parameter is served and documented as a problem."""
    job = await api.post("/jobs", json={"kind": IDLE_KIND})
    response = await api.get(f"/jobs/{job.json()['id']}/events", params={"after": -1})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM_JSON)


@pytest.mark.parametrize("path", ["/jobs", "/jobs/{id}/input"])
async def test_a_body_that_is_not_utf8_is_422(api: httpx.AsyncClient, path: str) -> None:
    job = await api.post("/jobs", json={"kind": IDLE_KIND})
    response = await api.post(
        path.format(id=job.json()["id"]),
        content=b'{"kind": "report", "payload": "\xff\xfe"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


async def test_pin_and_unpin_a_job(api: httpx.AsyncClient) -> None:
    """Found by the fuzzing above: pin/unpin were a 500 ('pinned IS NOT $n' is not SQL)."""
    job = (await api.post("/jobs", json={"kind": IDLE_KIND})).json()
    for action, pinned, version in [("pin", True, 2), ("pin", True, 2), ("unpin", False, 3)]:
        response = await api.post(f"/jobs/{job['id']}/{action}")
        assert response.status_code == 200, response.text
        assert response.json()["pinned"] is pinned
        assert response.json()["version"] == version  # pinning twice changes nothing


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/jobs", "GET, POST"),
        ("DELETE", "/jobs", "GET, POST"),
        ("HEAD", "/jobs/{id}", "GET"),
        ("PUT", "/jobs/{id}/events", "GET"),
        ("GET", "/jobs/{id}/cancel", "POST"),
        ("POST", "/healthz", "GET"),
    ],
)
async def test_a_405_allows_every_method_the_path_serves(
    api: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    """``Allow`` named only the first matching route's methods: ``POST`` for ``/jobs``."""
    job = (await api.post("/jobs", json={"kind": IDLE_KIND})).json()
    response = await api.request(method, path.format(id=job["id"]))
    if method == "HEAD":  # no body, so no problem document
        assert response.status_code == 405
    else:
        assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allowed
    documented = {m.upper() for m in SPEC["paths"][path.replace("{id}", "{job_id}")]}
    assert set(allowed.split(", ")) == documented


def test_job_ids_are_uuids_in_the_schema() -> None:
    """A plain string let fuzzers send ids the API refuses; the refusal stays 400
    ``invalid_job_id`` (``test_jobs.py``), not FastAPI's 422."""
    by_id = [
        SPEC["paths"][path][method.lower()]
        for method, path in OPERATIONS
        if path.startswith("/jobs/{")
    ]
    assert len(by_id) == 9
    for operation in by_id:
        (parameter,) = [p for p in operation["parameters"] if p["in"] == "path"]
        assert parameter["name"] == "job_id"
        assert parameter["schema"]["format"] == "uuid", operation
        assert "400" in operation["responses"], operation


def test_the_204_of_a_finished_stream_is_documented() -> None:
    """Resuming at or after the terminal event is 204 (``test_events.py``): it was undocumented."""
    assert "204" in SPEC["paths"]["/jobs/{job_id}/events"]["get"]["responses"]


def test_a_submitted_job_links_to_every_job_operation() -> None:
    """Links let stateful testing (and clients) take the id of a new job to every job route."""
    job_operations = {(m, p) for m, p in OPERATIONS if p.startswith("/jobs/{job_id}")}
    for status in ("200", "201"):
        links = SPEC["paths"]["/jobs"]["post"]["responses"][status]["links"]
        targets = set()
        for link in links.values():
            [(method, path)] = [
                (m.upper(), p)
                for p, ops in SPEC["paths"].items()
                for m, op in ops.items()
                if op["operationId"] == link["operationId"]
            ]
            assert link["parameters"] == {"job_id": "$response.body#/id"}
            targets.add((method, path))
        assert targets == job_operations
