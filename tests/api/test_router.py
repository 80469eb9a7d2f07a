"""jobkeeper's router inside a host application, on the host's terms: the host's own auth says who
calls (``create_router(caller=...)``) and its principal, never a token, is recorded; jobkeeper's
routes answer their own errors as problems without any app-wide install, and leave the host's
own errors alone; ``Location`` follows the mount prefix and a proxy's ``root_path``; the host's
routes get the manager (``JobManagerDep``); OpenAPI names the scheme each router asks for."""

# No ``from __future__ import annotations``: the host's routes are defined inside ``host_app``
# and FastAPI resolves their annotations at definition, as an application's own would be.

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from jobkeeper.api import (
    Caller,
    JobManagerDep,
    api_key_caller,
    create_app,
    create_inbox_router,
    create_router,
    create_schedules_router,
    health_router,
    jobs_router,
    lifespan,
)
from jobkeeper.api.auth import ApiKeys
from jobkeeper.manager import JobManager
from jobkeeper.testing import lifespan_client
from support import eventually

from .support import IDLE_KIND, PROBLEM_JSON, bearer, make_settings, running_worker

# the host's own users: token -> name (its tenant is the test's)
USERS = {"uma-token": "uma", "carl-token": "carl"}
_users = HTTPBearer(auto_error=False, scheme_name="hostUsers")


class Note(BaseModel):
    text: str


def host_app(database_url: str, tenant: str) -> FastAPI:
    """An application with its own bearer auth, its own routes, and jobkeeper's router mounted
    under ``/api`` on that auth, without ``problems.install``."""

    async def current_user(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_users)],
    ) -> str:
        name = None if credentials is None else USERS.get(credentials.credentials)
        if name is None:
            raise HTTPException(401, "who are you?", headers={"WWW-Authenticate": "Bearer"})
        return name

    async def caller(user: Annotated[str, Depends(current_user)]) -> Caller:
        return Caller(tenant=tenant, principal=f"user:{user}")

    app = FastAPI(lifespan=lifespan(make_settings(database_url)))
    app.include_router(create_router(caller=caller), prefix="/api")
    app.include_router(create_schedules_router(caller=caller), prefix="/api")
    app.include_router(create_inbox_router(caller=caller), prefix="/api")

    @app.get("/me")
    async def me(user: Annotated[str, Depends(current_user)]) -> dict[str, str]:
        return {"name": user}

    @app.post("/notes")
    async def note(body: Note) -> dict[str, str]:
        return {"text": body.text}

    @app.get("/my-jobs/{job_id}")
    async def my_job(
        job_id: str, jobs: JobManagerDep, user: Annotated[str, Depends(current_user)]
    ) -> dict[str, str]:
        """The host's own route, on the lifespan's manager."""
        job = await jobs.get(job_id, tenant=tenant)
        return {"status": job.status.value, "seen_by": user}

    return app


class BehindProxy:
    """What a server started with ``--root-path /proxy`` does to each request a proxy forwards
    without that prefix: the prefix becomes ``root_path`` and the front of ``path``."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app, self.root_path = app, root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "root_path": self.root_path, "path": self.root_path + scope["path"]}
        await self.app(scope, receive, send)


@asynccontextmanager
async def host(
    database_url: str, tenant: str, root_path: str = ""
) -> AsyncIterator[httpx.AsyncClient]:
    app = host_app(database_url, tenant)
    if root_path:
        app.add_middleware(BehindProxy, root_path=root_path)
    async with lifespan_client(app, headers=bearer("uma-token")) as client:
        yield client


def assert_own_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code), body
    return body


async def test_the_routes_answer_their_own_errors_as_problems_and_leave_the_hosts_alone(
    database_url: str, tenant: str
) -> None:
    async with host(database_url, tenant) as client:
        missing = uuid.uuid4()
        problem = assert_own_problem(await client.get(f"/api/jobs/{missing}"), 404, "job_not_found")
        assert problem["job_id"] == str(missing) and problem["instance"] == f"/api/jobs/{missing}"
        assert_own_problem(await client.get("/api/jobs/not-a-uuid"), 400, "invalid_job_id")
        invalid = assert_own_problem(
            await client.post("/api/jobs", json={"kind": 7}), 422, "validation_error"
        )
        assert invalid["errors"][0]["loc"] == ["body", "kind"]
        not_utf8 = await client.post(
            "/api/jobs",
            content=b'{"kind": "report", "payload": "\xff"}',
            headers={"Content-Type": "application/json"},
        )
        assert_own_problem(not_utf8, 422, "validation_error")

        # the host's own errors: FastAPI's JSON, as if jobkeeper were not mounted
        for response in (
            await client.get("/me", headers={"Authorization": "Bearer nobody"}),
            await client.get("/api/jobs", headers={"Authorization": "Bearer nobody"}),
            await client.post("/api/jobs", json={"kind": IDLE_KIND}, headers={"Authorization": ""}),
        ):
            assert response.status_code == 401
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {"detail": "who are you?"}
        host_invalid = await client.post("/notes", json={"text": 7})
        assert host_invalid.status_code == 422
        assert host_invalid.headers["content-type"] == "application/json"
        assert host_invalid.json()["detail"][0]["loc"] == ["body", "text"]
        unknown = await client.get("/no/such/route")
        assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not Found"})


async def test_the_hosts_principal_is_who_answered_and_who_cancelled(
    database_url: str, tenant: str, job_manager: JobManager
) -> None:
    async with host(database_url, tenant) as client:
        submitted = await client.post("/api/jobs", json={"kind": "demo.ask", "payload": {}})
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        async with running_worker(job_manager, ["demo.ask"]):
            await job_status_of(job_manager, job_id, tenant, "waiting_input")
            waiting = (await client.get(f"/api/jobs/{job_id}")).json()
            answered = await client.post(
                f"/api/jobs/{job_id}/input",
                json={"answer": {"approve": True}},
                headers=bearer("carl-token"),
            )
            assert answered.status_code == 200, answered.text
        job = await job_manager.get(job_id, tenant=tenant, consistency="strong")
        assert job.answers[waiting["prompt"]["key"]]["answered_by"] == "user:carl"

        idle = (await client.post("/api/jobs", json={"kind": IDLE_KIND})).json()
        cancelled = await client.post(f"/api/jobs/{idle['id']}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"

    answers = [e for e in await job_manager.events(job_id, tenant=tenant) if e.type == "answered"]
    assert answers[0].data["answered_by"] == "user:carl"
    history = await job_manager.events(idle["id"], tenant=tenant)
    assert (history[-1].type, history[-1].data) == ("cancelled", {"cancelled_by": "user:uma"})


async def test_a_running_jobs_cancel_request_names_who_asked(
    job_manager: JobManager, tenant: str
) -> None:
    job = await job_manager.submit(tenant, "demo.sleep", {"seconds": 30})
    async with running_worker(job_manager, ["demo.sleep"]):
        await job_status_of(job_manager, job.id, tenant, "running")
        await job_manager.cancel(job.id, tenant=tenant, cancelled_by="user:ops")
    history = await job_manager.events(job.id, tenant=tenant)
    requested = [e for e in history if e.type == "cancel_requested"]
    assert [e.data for e in requested] == [{"cancelled_by": "user:ops"}]


async def job_status_of(
    jobs: JobManager, job_id: uuid.UUID | str, tenant: str, status: str
) -> None:
    async def reached() -> bool:
        job = await jobs.get(job_id, tenant=tenant, consistency="strong")
        return job.status.value == status

    await eventually(reached, what=f"job {job_id} to be {status}")


async def test_location_follows_the_mount_prefix(database_url: str, tenant: str) -> None:
    async with host(database_url, tenant) as client:
        created = await client.post("/api/jobs", json={"kind": IDLE_KIND})
        assert created.headers["location"] == f"/api/jobs/{created.json()['id']}"
        assert (await client.get(created.headers["location"])).json() == created.json()
        mine = await client.get(f"/my-jobs/{created.json()['id']}")
        assert mine.json() == {"status": "queued", "seen_by": "uma"}  # JobManagerDep


async def test_the_schedules_and_inbox_routers_take_the_hosts_caller_and_prefix(
    database_url: str, tenant: str, job_manager: JobManager
) -> None:
    async with host(database_url, tenant) as client:
        created = await client.post(
            "/api/schedules", json={"name": "nightly", "kind": IDLE_KIND, "cron": "0 3 * * *"}
        )
        assert created.status_code == 201, created.text
        assert created.headers["location"] == f"/api/schedules/{created.json()['id']}"
        assert (await client.get(created.headers["location"])).json() == created.json()
        # the host's caller decided the tenant
        (mine,) = await job_manager.list_schedules(tenant=tenant)
        assert str(mine.id) == created.json()["id"]
        inbox = await client.get("/api/inbox")
        assert inbox.status_code == 200 and inbox.json() == {"items": [], "next_cursor": None}
        # without the host's credentials: the host's own 401, not a jobkeeper problem
        for path in ("/api/schedules", "/api/inbox"):
            refused = await client.get(path, headers={"Authorization": ""})
            assert refused.status_code == 401
            assert refused.headers["content-type"] == "application/json"


async def test_location_follows_a_proxys_root_path(database_url: str, tenant: str) -> None:
    """Behind a proxy that strips ``/proxy`` (``root_path``), and mounted at ``/svc``."""
    async with host(database_url, tenant, root_path="/proxy") as client:
        created = await client.post("/api/jobs", json={"kind": IDLE_KIND})
        assert created.headers["location"] == f"/proxy/api/jobs/{created.json()['id']}"

    app = host_app(database_url, tenant)
    outer = Starlette(
        routes=[Mount("/svc", app=app)], lifespan=lambda _: app.router.lifespan_context(app)
    )
    async with lifespan_client(outer, headers=bearer("uma-token")) as client:
        created = await client.post("/svc/api/jobs", json={"kind": IDLE_KIND})
        assert created.status_code == 201, created.text
        assert created.headers["location"] == f"/svc/api/jobs/{created.json()['id']}"
        assert (await client.get(created.headers["location"])).status_code == 200


async def test_an_api_keys_principal_is_its_id_never_its_token(
    database_url: str, tenant: str, job_manager: JobManager
) -> None:
    key = await ApiKeys(job_manager).create(tenant)
    app = FastAPI(lifespan=lifespan(make_settings(database_url)))
    app.include_router(jobs_router, prefix="/v1")
    async with lifespan_client(app, headers=bearer(key.key)) as client:
        job = (await client.post("/v1/jobs", json={"kind": IDLE_KIND})).json()
        assert (await client.post(f"/v1/jobs/{job['id']}/cancel")).status_code == 202
        refused = await client.get("/v1/jobs", headers=bearer("jk_wrong"))
        assert_own_problem(refused, 401, "unauthorized")
        assert refused.headers["www-authenticate"] == "Bearer"
    (cancelled,) = [e for e in await job_manager.events(job["id"], tenant=tenant)][-1:]
    assert cancelled.data == {"cancelled_by": f"api-key:{key.id}"}
    assert key.key[3:13] not in str(cancelled.data)


async def test_dependency_overrides_of_the_key_check_reach_the_polled_read(
    database_url: str, tenant: str
) -> None:
    """A host's tests override ``api_key_caller`` (no keys needed): ``GET /jobs/{id}``, which
    reads its headers itself for speed, honours the override like every route, in ``create_app``
    and on ``jobs_router`` mounted by a host."""
    served = create_app(make_settings(database_url))
    mounted = FastAPI(lifespan=lifespan(make_settings(database_url)))
    mounted.include_router(jobs_router, prefix="/v1")
    for app, prefix in ((served, ""), (mounted, "/v1")):
        app.dependency_overrides[api_key_caller] = lambda: Caller(tenant=tenant, principal="test")
        async with lifespan_client(app) as client:
            job = (await client.post(f"{prefix}/jobs", json={"kind": IDLE_KIND})).json()
            read = await client.get(f"{prefix}/jobs/{job['id']}")
            assert read.status_code == 200, read.text
            assert read.json() == job


async def test_with_auth_disabled_everyone_is_the_default_tenant(database_url: str) -> None:
    app = create_app(make_settings(database_url, auth="disabled"))
    async with lifespan_client(app) as client:
        job = (await client.post("/jobs", json={"kind": IDLE_KIND})).json()
        assert (await client.post(f"/jobs/{job['id']}/cancel")).status_code == 202
    async with await JobManager.connect(database_url, pool_size=1) as jobs:
        history = await jobs.events(job["id"], tenant="default")
    assert history[-1].data == {"cancelled_by": "anonymous"}


def test_openapi_names_the_scheme_each_router_asks_for() -> None:
    unused = "postgresql://unused@127.0.0.1/unused"
    keyed = create_app(make_settings(unused)).openapi()
    assert keyed["components"]["securitySchemes"]["jobkeeperApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A jobkeeper API key (`jobkeeper keys create TENANT`).",
    }
    operations = [op for path, ops in keyed["paths"].items() for op in ops.values()]
    jobs = [op for op in operations if "jobs" in op["tags"]]
    assert len(jobs) == len(jobs_router.routes)
    assert all(op["security"] == [{"jobkeeperApiKey": []}] for op in jobs)
    assert all("security" not in op for op in operations if "health" in op["tags"])

    hosted = host_app(unused, "t").openapi()
    assert set(hosted["components"]["securitySchemes"]) == {"hostUsers"}
    hosted_jobs = [
        op
        for path, ops in hosted["paths"].items()
        for op in ops.values()
        if path.startswith("/api/jobs")
    ]
    assert len(hosted_jobs) == len(jobs_router.routes)
    assert all(op["security"] == [{"hostUsers": []}] for op in hosted_jobs)
    assert all("401" not in op["responses"] for op in hosted_jobs)  # the host's to describe


def test_the_health_router_is_exported_for_the_host_to_mount() -> None:
    paths = {route.path for route in health_router.routes}  # type: ignore[attr-defined]
    assert paths == {"/healthz", "/readyz", "/metrics"}


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_links_of_a_new_job_reach_its_operations_under_any_prefix(prefix: str) -> None:
    app = FastAPI()
    app.include_router(jobs_router, prefix=prefix)
    spec = app.openapi()
    ids = {op["operationId"] for ops in spec["paths"].values() for op in ops.values()}
    links = spec["paths"][f"{prefix}/jobs"]["post"]["responses"]["201"]["links"]
    by_id = {
        op["operationId"]
        for path, ops in spec["paths"].items()
        for op in ops.values()
        if "{job_id}" in path
    }
    # every operation on one job is reached from a new job, and every link reaches one
    assert {link["operationId"] for link in links.values()} == by_id
    assert by_id <= ids


@pytest.mark.parametrize(("status", "code"), [(401, "unauthorized"), (403, "invalid_request")])
async def test_install_turns_an_http_exception_into_a_problem_of_its_own_status(
    database_url: str, status: int, code: str
) -> None:
    """``install`` (what ``create_app`` does) once said ``"status": 400`` in the body of a 401."""
    app = create_app(make_settings(database_url))

    @app.get("/guarded")
    async def guarded() -> None:
        raise HTTPException(status, "no", headers={"WWW-Authenticate": "Bearer"})

    async with lifespan_client(app) as client:
        response = await client.get("/guarded")
    body = assert_own_problem(response, status, code)
    assert body["detail"] == "no" and response.headers["www-authenticate"] == "Bearer"
