"""The polled read, ``GET /jobs/{job_id}``: ``create_app``'s application answers it in front of
its middleware stack (``PolledReads``), with the answers of the route behind it (the route
answers when the application added middleware of its own, which then sees the read)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from jobkeeper.api.app import create_app
from jobkeeper.api.auth import ApiKeys, hash_key
from jobkeeper.api.deps import Services
from jobkeeper.api.polled import PolledReads
from jobkeeper.api.problems import ApiProblem
from jobkeeper.domain.values import Job
from jobkeeper.manager import JobManager
from support import eventually

from .support import IDLE_KIND, assert_problem, bearer, make_settings, serve

REQUEST_ID = "same-id-on-both"


class Recording:
    """An application's own middleware: records the paths it saw."""

    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


def answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, response.headers.multi_items(), response.content


async def test_the_polled_read_answers_as_the_route_does(
    database_url: str, job_manager: JobManager, tenant: str
) -> None:
    key = (await ApiKeys(job_manager).create(tenant)).key
    job = await job_manager.submit(tenant, IDLE_KIND, {"n": 1})
    others = await job_manager.submit(f"{tenant}-other", IDLE_KIND, None)
    etag = f'"{job.version}"'
    path = f"/jobs/{job.id}"
    requests: list[tuple[str, dict[str, str]]] = [
        (path, bearer(key)),
        (path, {**bearer(key), "If-None-Match": etag}),
        (path, {**bearer(key), "If-None-Match": f'"99", W/{etag}'}),
        (path, {**bearer(key), "If-None-Match": "*"}),
        (path, {**bearer(key), "If-None-Match": '"99"'}),
        (path, {**bearer(key), "Cache-Control": "no-cache"}),
        ("/jobs/not-a-uuid", bearer(key)),
        (f"/jobs/{uuid.uuid4()}", bearer(key)),
        (f"/jobs/{others.id}", bearer(key)),
        (path, {}),
        (path, {"Authorization": "Bearer jk_not-a-key"}),
        (path, {"Authorization": f"Basic {key}"}),
    ]
    fast, seen = create_app(make_settings(database_url)), list[str]()
    routed = create_app(make_settings(database_url))
    routed.add_middleware(Recording, seen=seen)
    assert isinstance(fast.build_middleware_stack(), PolledReads)
    assert not isinstance(routed.build_middleware_stack(), PolledReads)
    answers: dict[str, list[tuple[int, list[tuple[str, str]], bytes]]] = {}
    for name, app in (("fast", fast), ("routed", routed)):
        async with serve(app, headers={"X-Request-ID": REQUEST_ID}) as served:
            answers[name] = [
                answer(await served.client.get(url, headers=headers)) for url, headers in requests
            ]
    assert [status for status, _, _ in answers["fast"]] == [
        200, 304, 304, 304, 200, 200, 400, 404, 404, 401, 401, 401,
    ]  # fmt: skip
    assert answers["fast"] == answers["routed"]
    assert all(("x-request-id", REQUEST_ID) in headers for _, headers, _ in answers["fast"])
    assert seen.count(path) == 9  # the application's middleware saw every polled read


async def test_an_unhandled_error_of_the_polled_read_is_a_500_with_its_request_id(
    api: httpx.AsyncClient, job_manager: JobManager, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await job_manager.submit(tenant, IDLE_KIND, None)

    def broken(self: Services, job: Job) -> None:
        raise RuntimeError("s3cret-internal-detail")

    monkeypatch.setattr(Services, "encoded_job", broken)
    response = await api.get(f"/jobs/{job.id}", headers={"X-Request-ID": "broken-read"})
    problem = assert_problem(response, 500, "internal_error")
    assert problem["request_id"] == "broken-read"
    assert "s3cret" not in response.text


async def test_a_revoked_key_stops_working_within_the_key_cache_ttl(
    job_manager: JobManager, tenant: str
) -> None:
    keys = ApiKeys(job_manager, cache_ttl=0.5)
    new = await keys.create(tenant)
    caller = await keys.caller_of(new.key)
    assert caller.tenant == tenant
    assert await keys.caller_of(new.key) == caller  # trusted: a token seen before
    assert await keys.revoke(new.prefix)

    async def refused() -> bool:
        try:
            await keys.caller_of(new.key)
        except ApiProblem as problem:
            return problem.code == "unauthorized"
        return False

    await eventually(refused, what="the revoked key to be refused")
    with pytest.raises(ApiProblem):
        await keys.caller_of_digest(hash_key(new.key))
