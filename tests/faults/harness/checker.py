"""The checker: the invariants of docs/reliability.md, over the acknowledgement log, the replicas'
reads, the HTTP statuses, the processes and the final database.

``check()`` returns a ``Report``: ``violations`` (per invariant, a few examples each: empty when
the invariant held) and ``figures`` (what the run did: acknowledged, lost, duplicates, re-runs
and why, recovery seconds...).

How a write of a superseded lease is detected from the history alone: the harness's handlers mark
each write they make under a lease with the ``seq`` of the ``claimed`` event they run under
(``tests/faults/harness/tasks.py``). Walking a job's events in order, the lease held is the one
of the last ``claimed`` event, until an event that ends it (``succeeded``, ``retried``,
``released``, ``asked``, ``failed``, ``cancelled``). A progress, question or result whose mark is
not that claim (an older claim, or none held) is a write accepted from a lease that was no longer
the job's: a violation of fencing. A ``claimed`` event while a lease is still held is two leases
at once (a double run).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from .tasks import ASK

__all__ = ["INVARIANTS", "Report", "check"]

# the invariants, in the order docs/reliability.md states them
INVARIANTS = (
    "no_acknowledged_job_lost",
    "one_job_per_idempotency_key",
    "at_most_one_success",
    "no_superseded_lease_write",
    "one_lease_at_a_time",
    "no_job_running_past_its_lease",
    "every_acknowledged_answer_delivered",
    "replica_reads_never_go_back",
    "no_500",
    "every_process_alive_unless_killed",
)
EXAMPLES = 5  # examples kept per invariant
TERMINAL = {"succeeded", "failed", "cancelled"}
# events that end the lease the job's last claim gave
LEASE_ENDS = {"succeeded", "retried", "released", "asked", "failed", "cancelled"}
# the writes the handlers mark with their claim (tests/faults/harness/tasks.py)
MARKED = {"progress", "asked", "succeeded"}
_MARK = re.compile(r"claim (\d+)")
_NEVER_RETRIEVED = "Task exception was never retrieved"


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    violations: dict[str, list[str]] = field(default_factory=lambda: {i: [] for i in INVARIANTS})
    counts: Counter[str] = field(default_factory=Counter)

    def violate(self, invariant: str, example: str) -> None:
        self.counts[invariant] += 1
        if len(self.violations[invariant]) < EXAMPLES:
            self.violations[invariant].append(example)

    @property
    def held(self) -> bool:
        return not self.counts

    def summary(self) -> str:
        lines = [f"{name}: {self.counts[name]} violation(s)" for name in INVARIANTS]
        for name in INVARIANTS:
            lines.extend(f"  {name}: {example}" for example in self.violations[name])
        return "\n".join(lines)


@dataclass(frozen=True)
class Run:
    """What the harness observed besides the database."""

    ack_log: Path
    reads_log: Path
    statuses: Mapping[tuple[str, str], int]
    faults: Sequence[Mapping[str, Any]]
    deaths: Sequence[str]  # tails of processes that died although nothing killed them
    logs: Mapping[str, str]
    overdue_max: float  # the longest a running job's lease was seen expired during the run
    overdue_bound: float


def _mark(text: Any) -> int | None:
    match = _MARK.search(text) if isinstance(text, str) else None
    return int(match.group(1)) if match else None


def _jsonb(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def check(conn: asyncpg.Connection, run: Run) -> Report:
    report = Report()
    acks = [json.loads(line) for line in run.ack_log.read_text().splitlines() if line]
    jobs = {
        str(r["id"]): {**dict(r), "result": _jsonb(r["result"])}
        for r in await conn.fetch(
            "SELECT id, kind, status, result, idempotency_key, lease_expires_at < now() AS expired"
            " FROM jobkeeper.jobs"
        )
    }
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in await conn.fetch(
        "SELECT job_id, seq, type, data, extract(epoch FROM at)::float8 AS at"
        " FROM jobkeeper.job_events ORDER BY job_id, seq"
    ):
        history[str(r["job_id"])].append({**dict(r), "data": _jsonb(r["data"])})

    _acknowledged(report, acks, jobs)
    _histories(report, jobs, history, run.faults)
    _leases(report, jobs, run)
    _answers(report, acks, jobs)
    _reads(report, run.reads_log)
    _statuses(report, run.statuses)
    _processes(report, run)
    report.figures["faults"] = dict(Counter(str(f["fault"]) for f in run.faults))
    restarts = [float(f["down_seconds"]) for f in run.faults if "down_seconds" in f]
    report.figures["postgres_restart_seconds_max"] = max(restarts, default=None)
    return report


def _acknowledged(
    report: Report, acks: Iterable[dict[str, Any]], jobs: Mapping[str, dict[str, Any]]
) -> None:
    submits = [a for a in acks if a["type"] == "submit"]
    by_key: dict[str, set[str]] = defaultdict(set)
    for ack in submits:
        by_key[ack["key"]].add(ack["job"])
    acknowledged = {a["job"] for a in submits}
    lost = sorted(acknowledged - jobs.keys())
    for job_id in lost:
        report.violate("no_acknowledged_job_lost", f"job {job_id} was acknowledged, is not stored")
    unfinished = [j for j in acknowledged & jobs.keys() if jobs[j]["status"] not in TERMINAL]
    for key, ids in by_key.items():
        stored = [j for j, row in jobs.items() if row["idempotency_key"] == key]
        if len(ids) != 1 or len(stored) != 1 or stored[0] not in ids:
            report.violate(
                "one_job_per_idempotency_key", f"key {key}: acknowledged {ids}, stored {stored}"
            )
    report.figures.update(
        acknowledged=len(acknowledged),
        acknowledgements=len(submits),
        created=sum(1 for a in submits if a["status"] == 201),
        replayed=sum(1 for a in submits if a["status"] == 200),
        refused_submits=sum(1 for a in acks if a["type"] == "submit_refused"),
        lost=len(lost),
        visible_not_terminal=len(unfinished),
        final_status=dict(Counter(jobs[j]["status"] for j in acknowledged & jobs.keys())),
    )


@dataclass
class _Tally:
    successes: int = 0
    claims: int = 0
    marked: int = 0  # writes under a lease whose mark was checked
    reruns: Counter[str] = field(default_factory=Counter)
    # per killed or stopped worker (the fault's index): seconds from the fault to the requeue
    # of each job it held
    recovery: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))


def _histories(
    report: Report,
    jobs: Mapping[str, dict[str, Any]],
    history: Mapping[str, list[dict[str, Any]]],
    faults: Sequence[Mapping[str, Any]],
) -> None:
    tally = _Tally()
    victims = [
        f for f in faults if f["fault"] in ("kill_worker", "stop_worker") and f.get("worker_id")
    ]
    for job_id, events in history.items():
        succeeded = [e["seq"] for e in events if e["type"] == "succeeded"]
        tally.successes += len(succeeded)
        if len(succeeded) > 1:
            report.violate("at_most_one_success", f"job {job_id}: succeeded at seq {succeeded}")
        _walk(report, tally, job_id, events, jobs.get(job_id, {}).get("result"), victims)
    per_job = [s for seconds in tally.recovery.values() for s in seconds]
    per_fault = [max(seconds) for seconds in tally.recovery.values()]
    report.figures.update(
        successes=tally.successes,
        duplicate_successes=report.counts["at_most_one_success"],
        lease_writes_checked=tally.marked,
        superseded_writes_accepted=report.counts["no_superseded_lease_write"],
        double_claims=report.counts["one_lease_at_a_time"],
        claims=tally.claims,
        reruns=sum(tally.reruns.values()),
        reruns_by_reason=dict(tally.reruns),
        recovered_jobs=len(per_job),
        recovery_seconds_max=round(max(per_fault), 2) if per_fault else None,
        recovery_seconds_median=round(statistics.median(per_fault), 2) if per_fault else None,
    )


def _walk(
    report: Report,
    tally: _Tally,
    job_id: str,
    events: Sequence[dict[str, Any]],
    result: Any,
    victims: Sequence[Mapping[str, Any]],
) -> None:
    """One job's history in order, tracking the lease held (module docstring)."""
    held: dict[str, Any] | None = None  # the claimed event whose lease is held
    ended: dict[str, Any] | None = None  # the event that ended the last lease, or answered
    for event in events:
        kind, seq = event["type"], event["seq"]
        if kind == "claimed":
            tally.claims += 1
            if held is not None:
                report.violate(
                    "one_lease_at_a_time",
                    f"job {job_id}: claimed at seq {seq} while claim {held['seq']} held",
                )
            elif ended is not None and ended["type"] != "answered":
                error = ended["data"].get("error") or {}
                tally.reruns[str(error.get("code", ended["type"]))] += 1
            held, ended = event, None
            continue
        if kind in MARKED:
            tally.marked += 1
            mark = _mark_of(event, result)
            if held is None or mark != held["seq"]:
                current = None if held is None else held["seq"]
                report.violate(
                    "no_superseded_lease_write",
                    f"job {job_id}: {kind} at seq {seq} written under claim {mark},"
                    f" the lease held was claim {current}",
                )
        if kind in LEASE_ENDS:
            if held is not None:
                recovered = _recovered(held, event, victims)
                if recovered is not None:
                    tally.recovery[recovered[0]].append(recovered[1])
            held = None
        if kind in LEASE_ENDS or kind == "answered":
            ended = event


def _mark_of(event: Mapping[str, Any], result: Any) -> int | None:
    """The claim a write under a lease says it was made under (``None``: no mark)."""
    if event["type"] == "progress":
        return _mark(event["data"].get("message"))
    if event["type"] == "asked":
        return _mark(event["data"].get("text"))
    claim = result.get("claim") if isinstance(result, dict) else None
    return claim if isinstance(claim, int) else None


def _recovered(
    claimed: Mapping[str, Any], end: Mapping[str, Any], victims: Sequence[Mapping[str, Any]]
) -> tuple[int, float] | None:
    """If this lease was held by a worker when it was killed or stopped (the first such fault)
    and the sweeper recovered it: that fault's index and the seconds from it to the requeue."""
    error = (end["data"].get("error") or {}) if end["type"] in ("retried", "failed") else {}
    if error.get("code") != "lease_expired":
        return None
    for index, fault in enumerate(victims):
        if (
            fault["worker_id"] == str(claimed["data"].get("worker"))
            and claimed["at"] <= fault["at"] <= end["at"]
        ):
            return index, end["at"] - fault["at"]
    return None


def _leases(report: Report, jobs: Mapping[str, dict[str, Any]], run: Run) -> None:
    for job_id, row in jobs.items():
        if row["status"] == "running" and row["expired"]:
            report.violate(
                "no_job_running_past_its_lease", f"job {job_id} still running, its lease expired"
            )
    if run.overdue_max > run.overdue_bound:
        report.violate(
            "no_job_running_past_its_lease",
            f"a running job's lease was expired for {run.overdue_max:.1f} s"
            f" (bound {run.overdue_bound} s)",
        )
    report.figures["lease_overdue_seconds_max"] = round(run.overdue_max, 2)


@dataclass
class _Answers:
    """The answers and cancels of the acknowledgement log, by job."""

    sent: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    acknowledged: dict[str, str] = field(default_factory=dict)  # job: token
    refused: set[str] = field(default_factory=set)
    # refused with no earlier attempt that may have been applied unheard: job: token
    surely_refused: dict[str, str] = field(default_factory=dict)
    cancelled: dict[str, str] = field(default_factory=dict)  # job: status it answered
    cancel_refused: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, acks: Iterable[dict[str, Any]]) -> _Answers:
        log = cls()
        for ack in acks:
            kind, job_id = ack["type"], ack.get("job")
            if kind == "answer_sent":
                log.sent[job_id].add(ack["token"])
            elif kind == "answer":
                log.acknowledged[job_id] = ack["token"]
            elif kind == "answer_refused":
                log.refused.add(job_id)
                if not ack["uncertain"]:
                    log.surely_refused[job_id] = ack["token"]
            elif kind == "cancel":
                log.cancelled[job_id] = ack["status"]
            elif kind == "cancel_refused":
                log.cancel_refused.add(job_id)
        return log


def _answer_seen(row: Mapping[str, Any]) -> Any:
    """The token of the answer the job's handler returned, if any."""
    result = row.get("result")
    answer = result.get("answer") if isinstance(result, dict) else None
    return answer.get("token") if isinstance(answer, dict) else None


def _answers(
    report: Report, acks: Iterable[dict[str, Any]], jobs: Mapping[str, dict[str, Any]]
) -> None:
    log = _Answers.read(acks)

    def violate(example: str) -> None:
        report.violate("every_acknowledged_answer_delivered", example)

    for job_id, token in log.acknowledged.items():
        row = jobs.get(job_id, {})
        seen = _answer_seen(row)
        # delivered, unless a cancel acknowledged after the answer ended the job
        if seen != token and not (row.get("status") == "cancelled" and job_id in log.cancelled):
            violate(
                f"job {job_id}: answer {token} acknowledged, job {row.get('status')} saw {seen}"
            )
    for job_id, token in log.surely_refused.items():
        if _answer_seen(jobs.get(job_id, {})) == token:
            violate(f"job {job_id}: answer {token} was refused, yet the handler saw it")
    for job_id, status in log.cancelled.items():
        ended = jobs.get(job_id, {}).get("status")
        if status == "cancelled" and ended != "cancelled":
            violate(f"job {job_id}: cancel acknowledged as cancelled, the job ended {ended}")
    for job_id, row in jobs.items():
        token = _answer_seen(row)
        if row["kind"] == ASK and row["status"] == "succeeded" and token not in log.sent[job_id]:
            violate(f"job {job_id} succeeded with answer {token}, never sent for it")
    # each race's winner, from where the job ended (an acknowledgement may have been lost)
    outcomes: Counter[str] = Counter()
    for job_id in set(log.cancelled) | log.cancel_refused:
        status = jobs.get(job_id, {}).get("status")
        if status == "succeeded":
            outcomes["answer_won"] += 1
        elif status == "cancelled":
            outcomes["answer_then_cancel" if job_id in log.acknowledged else "cancel_won"] += 1
        else:
            violate(f"job {job_id}: its answer/cancel race ended {status}")
    report.figures.update(
        answers_acknowledged=len(log.acknowledged),
        answers_refused=len(log.refused),
        races=sum(outcomes.values()),
        race_outcomes=dict(outcomes),
    )


def _reads(report: Report, reads_log: Path) -> None:
    last: dict[tuple[int, int, str], int] = {}
    reads = 0
    for line in reads_log.read_text().splitlines():
        replica, incarnation, job_id, version, _ = json.loads(line)
        reads += 1
        key = (replica, incarnation, job_id)
        if version < last.get(key, 0):
            report.violate(
                "replica_reads_never_go_back",
                f"replica {replica}.{incarnation} served job {job_id} at version {version}"
                f" after {last[key]}",
            )
        last[key] = max(version, last.get(key, 0))
    report.figures["replica_reads"] = reads


def _statuses(report: Report, statuses: Mapping[tuple[str, str], int]) -> None:
    for (op, status), count in sorted(statuses.items()):
        if status.isdigit() and int(status) >= 500 and status != "503":
            report.violate("no_500", f"{count} x {status} on {op}")
    report.figures["http_503"] = sum(c for (_, s), c in statuses.items() if s == "503")
    report.figures["http_transport_errors"] = sum(
        c for (_, s), c in statuses.items() if not s.isdigit()
    )
    report.figures["http_requests"] = sum(statuses.values())


def _processes(report: Report, run: Run) -> None:
    for tail in run.deaths:
        report.violate("every_process_alive_unless_killed", tail)
    for name, text in run.logs.items():
        if _NEVER_RETRIEVED in text:
            report.violate(
                "every_process_alive_unless_killed",
                f"{name}: a task died unnoticed ({text[-500:]})",
            )
    report.figures["log_tracebacks"] = sum(t.count("Traceback") for t in run.logs.values())
