"""The scenario's client, in this process: it talks to the replicas over HTTP only.

- ``submit``: ``POST /jobs`` with an ``Idempotency-Key``, retried with the same key on the other
  replica after a transport error or a 503 (a lost response may hide a created job: the key makes
  the retry return that job). Each 2xx is an ACKNOWLEDGEMENT and goes to the acknowledgement log
  (jsonl) as it arrives: the promise the checker holds the system to.
- ``storm``: the same key and body from many concurrent requests.
- ``answerer``: finds the jobs waiting for input and answers each (a fresh token per answer), or
  answers and cancels at once, racing the two.
- ``poller``: one per replica, reads acknowledged jobs one request at a time, recording every
  read's (replica, its incarnation, job, version): a replica must never go back in version.

Every response's status is counted per operation, so the checker can tell that no request got a
500.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx

from .cluster import Cluster, Member

__all__ = ["Client"]

RETRY_PAUSE = 0.05  # seconds before a retry (on the other replica)
GIVE_UP = 60.0  # seconds one request is retried before the client gives up on it
TIMEOUT = 10.0  # one HTTP request's bound
WAITING_POLL = 0.2  # seconds between two looks for questions
RACE_JITTER = 0.01  # each racer starts within this many seconds, so either may win


class Client:
    def __init__(self, cluster: Cluster, ack_log: Path, reads_log: Path) -> None:
        self._cluster = cluster
        self._http = httpx.AsyncClient(
            timeout=TIMEOUT, limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)
        )
        self._acks = ack_log.open("w", encoding="utf-8")
        self._reads = reads_log.open("w", encoding="utf-8")
        self._turn = 0
        self.statuses: Counter[tuple[str, str]] = Counter()
        self.acked: list[str] = []  # acknowledged job ids, in order (the pollers' choice)
        self._acked_set: set[str] = set()
        self.ask_jobs: set[str] = set()
        self.racing: set[str] = set()
        self.reads = 0

    async def close(self) -> None:
        await self._http.aclose()
        self._acks.close()
        self._reads.close()

    def log(self, entry: dict[str, Any]) -> None:
        """One line of the acknowledgement log, written (and flushed) as it happens."""
        self._acks.write(json.dumps({**entry, "t": time.time()}) + "\n")
        self._acks.flush()

    # --- requests, retried ---------------------------------------------------------------------

    def _next_replica(self) -> Member:
        self._turn += 1
        replicas = self._cluster.replicas
        return replicas[self._turn % len(replicas)]

    async def _call(
        self, op: str, method: str, path: str, **options: Any
    ) -> tuple[httpx.Response | None, bool]:
        """Send until a response that is not a 5xx, or GIVE_UP: (the response, whether an
        earlier attempt may have been applied without the client hearing of it)."""
        end = time.monotonic() + GIVE_UP
        uncertain = False
        while time.monotonic() < end:
            replica = self._next_replica()
            try:
                response = await self._http.request(
                    method, f"{self._cluster.url(replica)}{path}", **options
                )
            except httpx.TransportError as exc:
                self.statuses[(op, type(exc).__name__)] += 1
                uncertain = True
                await asyncio.sleep(RETRY_PAUSE)
                continue
            self.statuses[(op, str(response.status_code))] += 1
            if response.status_code < 500:
                return response, uncertain
            uncertain = True
            await asyncio.sleep(RETRY_PAUSE)
        return None, uncertain

    # --- submitting ----------------------------------------------------------------------------

    async def submit(self, key: str, kind: str, payload: dict[str, Any]) -> str | None:
        body = {"kind": kind, "payload": payload}
        response, _ = await self._call(
            "submit", "POST", "/jobs", json=body, headers={"Idempotency-Key": key}
        )
        if response is None or not response.is_success:
            self.log({"type": "submit_refused", "key": key, "code": _code(response)})
            return None
        job_id = str(response.json()["id"])
        self.log(
            {
                "type": "submit",
                "key": key,
                "job": job_id,
                "kind": kind,
                "status": response.status_code,
            }
        )
        if job_id not in self._acked_set:
            self._acked_set.add(job_id)
            self.acked.append(job_id)
        return job_id

    async def storm(
        self, key: str, kind: str, payload: dict[str, Any], requests: int
    ) -> str | None:
        """The same key and body from ``requests`` concurrent requests; the job acknowledged
        (the checker verifies that every acknowledgement names the same one)."""
        ids = await asyncio.gather(*(self.submit(key, kind, payload) for _ in range(requests)))
        return next((i for i in ids if i is not None), None)

    # --- questions -----------------------------------------------------------------------------

    async def answerer(self, stop: asyncio.Event) -> None:
        """Answer every question until ``stop``; a job in ``racing`` is answered and cancelled
        at the same time."""
        handled: set[str] = set()
        pending: set[asyncio.Task[Any]] = set()
        try:
            while not stop.is_set():
                response, _ = await self._call(
                    "list", "GET", "/jobs", params={"status": "waiting_input", "limit": 500}
                )
                if response is not None and response.is_success:
                    for job in response.json()["items"]:
                        job_id = str(job["id"])
                        if job_id in handled:
                            continue
                        handled.add(job_id)
                        work = (
                            asyncio.gather(
                                _after(random.uniform(0, RACE_JITTER), self.answer(job_id)),
                                _after(random.uniform(0, RACE_JITTER), self.cancel(job_id)),
                            )
                            if job_id in self.racing
                            else self.answer(job_id)
                        )
                        task = asyncio.ensure_future(work)
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                with_stop = asyncio.ensure_future(stop.wait())
                await asyncio.wait({with_stop}, timeout=WAITING_POLL)
                with_stop.cancel()
        finally:
            if pending:
                await asyncio.gather(*pending)

    async def answer(self, job_id: str) -> None:
        token = uuid.uuid4().hex
        self.log({"type": "answer_sent", "job": job_id, "token": token})
        body = {"answer": {"approve": True, "token": token}, "question_key": "q"}
        response, uncertain = await self._call("answer", "POST", f"/jobs/{job_id}/input", json=body)
        if response is not None and response.is_success:
            self.log({"type": "answer", "job": job_id, "token": token})
        else:
            code = _code(response)
            self.log(
                {
                    "type": "answer_refused",
                    "job": job_id,
                    "token": token,
                    "code": code,
                    "uncertain": uncertain,
                }
            )

    async def cancel(self, job_id: str) -> None:
        response, uncertain = await self._call("cancel", "POST", f"/jobs/{job_id}/cancel")
        if response is not None and response.is_success:
            self.log({"type": "cancel", "job": job_id, "status": response.json()["status"]})
        else:
            code = _code(response)
            self.log(
                {"type": "cancel_refused", "job": job_id, "code": code, "uncertain": uncertain}
            )

    # --- reads ---------------------------------------------------------------------------------

    async def poller(self, replica: Member, stop: asyncio.Event) -> None:
        """Read acknowledged jobs from one replica, one request at a time, until ``stop``."""
        while not stop.is_set():
            if not self.acked:
                await asyncio.sleep(RETRY_PAUSE)
                continue
            job_id = random.choice(self.acked)
            incarnation = replica.incarnation
            try:
                response = await self._http.get(f"{self._cluster.url(replica)}/jobs/{job_id}")
            except httpx.TransportError as exc:
                self.statuses[("read", type(exc).__name__)] += 1
                await asyncio.sleep(RETRY_PAUSE)
                continue
            self.statuses[("read", str(response.status_code))] += 1
            if response.status_code == 200 and replica.incarnation == incarnation:
                version = int(response.json()["version"])
                self._reads.write(
                    json.dumps([replica.index, incarnation, job_id, version, time.time()]) + "\n"
                )
                self.reads += 1
            await asyncio.sleep(0.005)  # sample, don't spin: the replicas serve the others too


async def _after(delay: float, work: Awaitable[None]) -> None:
    await asyncio.sleep(delay)
    await work


def _code(response: httpx.Response | None) -> str:
    if response is None:
        return "gave_up"
    try:
        return str(response.json().get("code", response.status_code))
    except ValueError:
        return str(response.status_code)
