"""Over HTTP, a backend terminated mid-statement is a 503 problem (``database_unavailable``),
never a 500, and the API is healthy again once the database answers."""

from __future__ import annotations

from uuid import uuid4

import asyncpg
import httpx

from jobkeeper.settings import asyncpg_dsn
from support import killed_while_waiting

from .support import IDLE_KIND


async def test_http_answers_503_when_a_backend_is_terminated_mid_statement(
    database_url: str, api: httpx.AsyncClient
) -> None:
    waiting = await api.post("/jobs", json={"kind": IDLE_KIND, "payload": {}})
    assert waiting.status_code == 201
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    locker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            requests = {
                "submit": api.post("/jobs", json={"kind": IDLE_KIND, "payload": {}}),
                "get": api.get(f"/jobs/{uuid4()}"),
                "answer": api.post(f"/jobs/{waiting.json()['id']}/input", json={"answer": 1}),
            }
            for name, request in requests.items():
                response = await killed_while_waiting(admin, request)
                assert response.status_code == 503, (name, response.text)
                assert response.json()["code"] == "database_unavailable"
    finally:
        await locker.close()
        await admin.close()
    assert (await api.get("/readyz")).status_code == 200
    assert (await api.get(f"/jobs/{waiting.json()['id']}")).status_code == 200
