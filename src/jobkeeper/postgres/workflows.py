"""Workflows: durable sleeps, child jobs recorded by their parent, parents parked until their
children finish, the wake-up that queues such a parent again, and cancelling a parent's children.

A sleep and a wait are parks like a question (``leases._ASK``): the lease is given up, so no
worker slot is held, and the attempt is not counted. The handler re-runs from the start once the
job is claimed again, and the context replays what these statements recorded in ``checkpoints``.

**No lost wake-up.** A parent in ``waiting_children`` is queued again by ``_WAKE``, which holds
only if every job in its ``waiting_for`` is terminal. It is run, as a statement of its own (a
fresh snapshot under READ COMMITTED), after each commit that may complete a wait: a child's
terminal write (by whichever process wrote it, ``JobManager``), and the parent's own park
(``_WAIT``). Of those commits, take the last one for a given wait: the wake-up run after it starts
after all of them committed, so it sees the parent parked and every child finished, and wakes the
parent. Two children that finish at the same moment both run it; both may see everything done,
and the parent's row lock settles it: the second waits for the first, re-checks
``status = 'waiting_children'`` on the row the first committed (READ COMMITTED's re-check of an
updated row), finds it queued and changes nothing. So the parent is woken once. Only a process
that dies between such a commit and its wake-up leaves a parent parked; the sweeper's
``_WAKE_DUE`` (every sweep) is that backstop.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from jobkeeper.domain.status import OPERATIONS, TERMINAL, JobStatus
from jobkeeper.domain.values import Job, Lease
from jobkeeper.postgres.compile import raw, sources, target, with_event
from jobkeeper.postgres.leases import CLEAR_LEASE, fenced
from jobkeeper.postgres.pool import Database

__all__ = ["WorkflowStatements"]

_Q, _WC = JobStatus.QUEUED, JobStatus.WAITING_CHILDREN
for _operation in ("sleep", "wait_children"):  # fenced: the token exists only while running
    assert OPERATIONS[_operation].sources == {JobStatus.RUNNING}, _operation

_UNFINISHED = "c.status NOT IN ({})".format(", ".join(f"'{s.value}'" for s in sorted(TERMINAL)))
_PARK = f"attempts = greatest(jobs.attempts - 1, 0), {CLEAR_LEASE}"

# A durable sleep: queued again to run at $4 (or $5 s from now), the wake-up time kept in
# checkpoints under $3 ("sleep:<key>") so the re-run knows this sleep happened. A job asked to
# cancel does not start sleeping.
_SLEEP = with_event(
    fenced(
        f"status = {target('sleep', _Q)},"
        " run_after = coalesce($4::timestamptz, now() + make_interval(secs => $5::float8)),"
        " sleeping_until = coalesce($4::timestamptz, now() + make_interval(secs => $5::float8)),"
        " checkpoints = jobs.checkpoints || jsonb_build_object($3::text,"
        " to_jsonb(coalesce($4::timestamptz, now() + make_interval(secs => $5::float8)))),"
        f" {_PARK}",
        "key",
        "until",
        "seconds",
        also=" AND NOT jobs.cancel_requested",
    ),
    "'sleeping'",
    "jsonb_build_object('key', $3::text, 'until', changed.sleeping_until)",
)

# The re-run reached the sleep it was parked in: it is over.
_WOKE = with_event(
    fenced("sleeping_until = NULL", "key"),
    "'woke'",
    "jsonb_build_object('key', $3::text)",
)

# A child was submitted: keep its id under $3 ("spawn:<key>") so the re-run returns it.
_SPAWNED = with_event(
    fenced(
        "checkpoints = jobs.checkpoints || jsonb_build_object($3::text, $4::text)",
        "key",
        "child_id",
        "child_kind",
    ),
    "'spawned'",
    "jsonb_build_object('key', $3::text, 'child', $4::text, 'kind', $5::text)",
)

# Park the parent until the jobs $3 (of its tenant) have finished. Whether they already have is
# _WAKE's question, asked right after this commits (see the module docstring).
_WAIT = with_event(
    fenced(
        f"status = {target('wait_children', _WC)}, waiting_for = $3::uuid[], {_PARK}",
        "children",
        also=" AND NOT jobs.cancel_requested",
    ),
    "'waiting_for_children'",
    "jsonb_build_object('children', to_jsonb(changed.waiting_for))",
)


def _wake(which: str, *names: str) -> str:
    return f"""WITH changed AS (
    UPDATE jobs SET status = {target("wake", _Q)}, waiting_for = NULL, run_after = now(),
        version = jobs.version + 1, updated_at = now()
    WHERE {which} AND jobs.status IN ({sources("wake")})
      AND NOT EXISTS (SELECT 1 FROM jobs AS c
                      WHERE c.id = ANY(jobs.waiting_for) AND {_UNFINISHED})
    RETURNING jobs.*
)"""


_DONE = "'children_done'", "jsonb_build_object()"
# Queue again those of the parents $1 whose children have all finished.
_WAKE = with_event(raw(_wake("jobs.id = ANY($1::uuid[])"), "ids"), *_DONE)
# The sweeper's backstop: any parent whose children have all finished (up to $1 of them).
_WAKE_DUE = with_event(
    raw(
        _wake(
            f"""jobs.id = ANY(ARRAY(SELECT p.id FROM jobs AS p
        WHERE p.status IN ({sources("wake")}) AND NOT EXISTS (SELECT 1 FROM jobs AS c
            WHERE c.id = ANY(p.waiting_for) AND {_UNFINISHED})
        ORDER BY p.id LIMIT $1))"""
        ),
        "limit",
    ),
    *_DONE,
)


class WorkflowStatements:
    """The statements above, run on one ``Database``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def sleep(
        self, lease: Lease, key: str, *, until: datetime | None, seconds: float
    ) -> Job | None:
        """Park the job until ``until`` (or ``seconds`` from now); ``None``: lease lost or
        cancel requested."""
        params = {
            "job_id": lease.job.id,
            "token": lease.token,
            "key": key,
            "until": until,
            "seconds": seconds,
        }
        return await self._db.write_job(_SLEEP, params)

    async def woke(self, lease: Lease, key: str) -> Job | None:
        """Record that the sleep under ``key`` is over; ``None``: the lease was lost."""
        return await self._db.write_job(
            _WOKE, {"job_id": lease.job.id, "token": lease.token, "key": key}
        )

    async def spawned(self, lease: Lease, key: str, child: Job) -> Job | None:
        """Record the child spawned under ``key``; ``None``: the lease was lost."""
        params = {
            "job_id": lease.job.id,
            "token": lease.token,
            "key": key,
            "child_id": str(child.id),
            "child_kind": child.kind,
        }
        return await self._db.write_job(_SPAWNED, params)

    async def wait(self, lease: Lease, children: Sequence[UUID]) -> Job | None:
        """Park the job until ``children`` finish; ``None``: lease lost or cancel requested."""
        params = {"job_id": lease.job.id, "token": lease.token, "children": list(children)}
        return await self._db.write_job(_WAIT, params)

    async def wake(self, parents: Sequence[UUID]) -> list[Job]:
        """Queue again those of ``parents`` whose children have all finished."""
        return await self._db.write_jobs(_WAKE, {"ids": list(parents)})

    async def wake_due(self, *, limit: int) -> list[Job]:
        """Queue again up to ``limit`` parents whose children have all finished (a backstop)."""
        return await self._db.write_jobs(_WAKE_DUE, {"limit": limit})
