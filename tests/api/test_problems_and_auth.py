"""Every error is an RFC 9457 problem (``application/problem+json`` with a ``code``) carrying an
``X-Request-ID``; unhandled errors leak nothing; API keys decide the tenant; health probes."""

from __future__ import annotations

import uuid

import httpx
import pytest

from jobkeeper.api.app import create_app
from jobkeeper.api.auth import ApiKeys
from jobkeeper.manager import JobManager

from .support import IDLE_KIND, assert_problem, bearer, make_settings, serve

SECRET = "s3cret-internal-detail"


async def test_health_and_readiness_need_no_key(database_url: str) -> None:
    async with serve(create_app(make_settings(database_url))) as served:
        health = await served.client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        ready = await served.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready"
        assert body["database"] is True
        assert body["listener_connected"] is True and body["cache_vouched"] is True
        assert body["feed_mode"] == "notify"


async def test_an_unknown_route_is_a_404_problem(api: httpx.AsyncClient) -> None:
    problem = assert_problem(await api.get("/no/such/route"), 404, "not_found")
    assert problem["instance"] == "/no/such/route"


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/healthz"), ("DELETE", "/jobs"), ("GET", "/jobs/x/cancel")]
)
async def test_a_wrong_method_is_a_405_problem(
    api: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await api.request(method, path)
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"]


async def test_an_unhandled_error_is_a_500_problem_that_leaks_nothing(
    database_url: str, api_key: str
) -> None:
    app = create_app(make_settings(database_url))

    async def boom() -> None:
        raise RuntimeError(f"{SECRET} at /srv/app/secrets.py password=hunter2")

    app.add_api_route("/boom", boom)
    async with serve(app, bearer(api_key)) as served:
        response = await served.client.get("/boom", headers={"X-Request-ID": "trace-500"})
        problem = assert_problem(response, 500, "internal_error")
        assert problem["request_id"] == "trace-500"
        assert problem["instance"] == "/boom"
        for leak in (SECRET, "RuntimeError", "Traceback", "hunter2", "secrets.py", ".py"):
            assert leak not in response.text
        # the app keeps serving after it
        assert (await served.client.get("/healthz")).status_code == 200


async def test_a_sane_incoming_request_id_is_echoed_and_a_bad_one_replaced(
    api: httpx.AsyncClient,
) -> None:
    echoed = await api.get(f"/jobs/{uuid.uuid4()}", headers={"X-Request-ID": "client-abc-123"})
    assert assert_problem(echoed, 404, "job_not_found")["request_id"] == "client-abc-123"
    overlong = await api.get(f"/jobs/{uuid.uuid4()}", headers={"X-Request-ID": "x" * 129})
    replaced = assert_problem(overlong, 404, "job_not_found")["request_id"]
    assert replaced != "x" * 129 and replaced
    ok = await api.get("/healthz")
    assert ok.headers.get("x-request-id")


# --- auth ----------------------------------------------------------------------------------------

JOB_ROUTES = [
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{id}"),
    ("POST", "/jobs/{id}/cancel"),
    ("POST", "/jobs/{id}/input"),
    ("GET", "/jobs/{id}/events"),
]


async def _assert_unauthorised(client: httpx.AsyncClient, job_id: str, **headers: str) -> None:
    for method, route in JOB_ROUTES:
        body = {"kind": IDLE_KIND} if route == "/jobs" else {"answer": True}
        response = await client.request(
            method,
            route.format(id=job_id),
            json=body if method == "POST" else None,
            headers=headers,
        )
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer", (method, route)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer jk_not-a-real-key", "Basic dXNlcjpwYXNz", "jk_bare"],
)
async def test_requests_without_a_valid_key_are_401(
    database_url: str, job_manager: JobManager, tenant: str, authorization: str | None
) -> None:
    job = await job_manager.submit(tenant, IDLE_KIND, None)
    async with serve(create_app(make_settings(database_url))) as served:
        headers = {} if authorization is None else {"Authorization": authorization}
        await _assert_unauthorised(served.client, str(job.id), **headers)
    unchanged = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert unchanged.version == 1


async def test_a_revoked_key_is_401(
    database_url: str, job_manager: JobManager, tenant: str
) -> None:
    keys = ApiKeys(job_manager)
    revoked, used_then_revoked = await keys.create(tenant), await keys.create(tenant)
    assert await keys.revoke(revoked.prefix)
    app = create_app(make_settings(database_url, key_cache_ttl=0))
    async with serve(app) as served:
        job_id = str(uuid.uuid4())
        await _assert_unauthorised(served.client, job_id, **bearer(revoked.key))

        before = await served.client.get("/jobs", headers=bearer(used_then_revoked.key))
        assert before.status_code == 200
        assert await keys.revoke(used_then_revoked.prefix)
        await _assert_unauthorised(served.client, job_id, **bearer(used_then_revoked.key))


async def test_a_key_acts_for_its_own_tenant(
    api: httpx.AsyncClient, job_manager: JobManager, tenant: str
) -> None:
    created = (await api.post("/jobs", json={"kind": IDLE_KIND})).json()
    job = await job_manager.get(created["id"], tenant=tenant)
    assert job.tenant == tenant
    # a lower-case scheme is fine too
    key = api.headers["authorization"].partition(" ")[2]
    response = await api.get(f"/jobs/{created['id']}", headers={"Authorization": f"bearer {key}"})
    assert response.status_code == 200


async def test_with_auth_disabled_every_request_is_tenant_default(
    database_url: str, job_manager: JobManager
) -> None:
    app = create_app(make_settings(database_url, auth="disabled"))
    async with serve(app) as served:
        response = await served.client.post("/jobs", json={"kind": IDLE_KIND, "payload": 1})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert (await job_manager.get(job_id, tenant="default")).payload == 1
        listed = (await served.client.get("/jobs", params={"limit": 500})).json()["items"]
        assert job_id in [item["id"] for item in listed]
        # a key (even a bogus one) changes nothing
        other = await served.client.get(f"/jobs/{job_id}", headers=bearer("jk_whatever"))
        assert other.status_code == 200
