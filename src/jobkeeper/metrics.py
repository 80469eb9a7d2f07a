"""Prometheus metrics of one process (API replica or worker), on its own registry.

Counters count what this process did (Prometheus sums them across processes); gauges describe
shared state (queue depth, live workers) and this process's cache and change feed. ``refresh()``
reads the shared state from Postgres; the HTTP ``/metrics`` route calls it before each scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from jobkeeper.domain.status import TERMINAL, JobStatus
from jobkeeper.domain.values import Job
from jobkeeper.maintenance import SweepReport
from jobkeeper.manager import JobManager

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)
_ANSWER_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)
# what a question's last deadline did, by the status it left the job in
_TIMEOUT_OUTCOME = {
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.QUEUED: "defaulted",
}
LIVE_WORKER_SECONDS = 90.0


class Metrics:
    """The metrics of one process; ``render()`` gives the Prometheus text format."""

    def __init__(self, jobs: JobManager) -> None:
        self._jobs = jobs
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "jobkeeper_jobs_submitted_total", "Jobs submitted.", ["kind"], registry=self.registry
        )
        self.finished = Counter(
            "jobkeeper_jobs_finished_total",
            "Jobs that reached a terminal status, by outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.claim_latency = Histogram(
            "jobkeeper_claim_latency_seconds",
            "From runnable (run_after) to claimed.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "jobkeeper_run_seconds",
            "From first start to the terminal status.",
            ["kind"],
            buckets=_RUN_BUCKETS,
            registry=self.registry,
        )
        self.swept = Counter(
            "jobkeeper_sweeper_actions_total",
            "What the sweeper did: leases recovered, questions timed out, payloads cleared, "
            "jobs expired, hook failures, tombstones purged, workers pruned, parents woken.",
            ["action"],
            registry=self.registry,
        )
        self.answer_time = Histogram(
            "jobkeeper_question_answer_seconds",
            "From a question asked to a person's answer.",
            ["kind"],
            buckets=_ANSWER_BUCKETS,
            registry=self.registry,
        )
        self.escalated = Counter(
            "jobkeeper_questions_escalated_total",
            "Questions handed to their next assignee at a deadline.",
            ["kind"],
            registry=self.registry,
        )
        self.timed_out = Counter(
            "jobkeeper_questions_timed_out_total",
            "Questions whose last deadline passed, by what it did (failed, cancelled, defaulted).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self._depth: dict[str, int] = {}
        self._waiting: list[tuple[str, str, int]] = []
        self._live_workers = 0
        self.registry.register(_StateCollector(self))
        # retention's changes count nothing here (the sweep report does): the jobs it clears or
        # deletes finished long before, and counting them again inflated jobs_finished_total; nor
        # need retention read them back whole for this observer
        jobs.observe(self.observe, skip=("payload_cleared", "expired"))

    def observe(self, operation: str, job: Job) -> None:
        """Count a write this process made (``JobManager.observe``)."""
        if operation == "submitted" and job.version == 1:
            self.submitted.labels(job.kind).inc()
        elif operation == "claimed":
            self.claim_latency.observe(max(0.0, (job.updated_at - job.run_after).total_seconds()))
        elif operation == "answered":
            self._observe_answer(job)
        elif operation == "escalated":
            self.escalated.labels(job.kind).inc()
        elif operation == "input_timeout":
            self.timed_out.labels(job.kind, _TIMEOUT_OUTCOME.get(job.status, "failed")).inc()
        if job.status in TERMINAL and operation not in ("pinned", "submitted"):
            self.finished.labels(job.kind, job.status.value).inc()
            if job.started_at is not None and job.finished_at is not None:
                seconds = (job.finished_at - job.started_at).total_seconds()
                self.run_time.labels(job.kind).observe(max(0.0, seconds))

    def _observe_answer(self, job: Job) -> None:
        """Time to answer: from the question's ``asked_at`` to the answer just stored."""
        entries = [e for e in (job.answers or {}).values() if e.get("asked_at")]
        if not entries:
            return
        latest = max(entries, key=lambda e: str(e.get("answered_at")))
        asked = datetime.fromisoformat(latest["asked_at"])
        answered = datetime.fromisoformat(latest["answered_at"])
        self.answer_time.labels(job.kind).observe(max(0.0, (answered - asked).total_seconds()))

    def record_sweep(self, report: SweepReport) -> None:
        for action in (
            "leases_recovered",
            "inputs_timed_out",
            "questions_escalated",
            "payloads_cleared",
            "jobs_expired",
            "hook_failures",
            "tombstones_purged",
            "workers_pruned",
            "parents_woken",
        ):
            count = getattr(report, action)
            if count:
                self.swept.labels(action).inc(count)

    async def refresh(self) -> None:
        """Read the shared gauges (queue depth, live workers) from Postgres."""
        self._depth = await self._jobs.queue_depth()
        self._waiting = await self._jobs.waiting_questions()
        self._live_workers = len(await self._jobs.workers.live(LIVE_WORKER_SECONDS))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges and counters read at scrape time from the manager and the last refresh."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        jobs = self._metrics._jobs
        stats = jobs.cache_stats()
        for name, value, text in (
            ("jobkeeper_cache_hits", stats.hits, "Cache hits."),
            ("jobkeeper_cache_misses", stats.misses, "Cache misses."),
            ("jobkeeper_cache_evictions", stats.evictions, "Entries evicted by the size bound."),
            ("jobkeeper_cache_expirations", stats.expirations, "Entries expired by their TTL."),
        ):
            yield CounterMetricFamily(name, text, value=value)
        yield GaugeMetricFamily("jobkeeper_cache_entries", "Cached jobs.", value=stats.size)
        feed = jobs.feed_status()
        yield GaugeMetricFamily(
            "jobkeeper_listener_connected",
            "1 while the change feed's connection is up.",
            value=int(feed.connected),
        )
        yield GaugeMetricFamily(
            "jobkeeper_change_feed_lag_seconds",
            "Seconds since the change feed last confirmed it is in sync.",
            value=feed.seconds_since_sync if feed.seconds_since_sync is not None else float("inf"),
        )
        yield from _watch_metrics(jobs)
        depth = GaugeMetricFamily("jobkeeper_jobs", "Jobs by live status.", labels=["status"])
        live = (
            JobStatus.QUEUED,
            JobStatus.RUNNING,
            JobStatus.WAITING_INPUT,
            JobStatus.WAITING_CHILDREN,
        )
        for status in live:
            depth.add_metric([status.value], self._metrics._depth.get(status.value, 0))
        yield depth
        waiting = GaugeMetricFamily(
            "jobkeeper_questions_waiting",
            "Open questions waiting for a person, by tenant and kind.",
            labels=["tenant", "kind"],
        )
        for tenant, kind, count in self._metrics._waiting:
            waiting.add_metric([tenant, kind], count)
        yield waiting
        yield GaugeMetricFamily(
            "jobkeeper_live_workers",
            "Workers that heartbeat recently.",
            value=self._metrics._live_workers,
        )


def _watch_metrics(jobs: JobManager) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The live watchers (``watch()``, the events streams) and this process's asyncio tasks: an
    operator sees what the streams hold and that nothing stays behind when they close."""
    watch = jobs.watch_stats()
    yield GaugeMetricFamily("jobkeeper_watchers", "Open event streams (watch()).", watch.watchers)
    yield GaugeMetricFamily("jobkeeper_watched_jobs", "Jobs with a live watcher.", watch.jobs)
    yield CounterMetricFamily(
        "jobkeeper_watch_reads",
        "Reads that fed the watchers of every job that changed in a batch.",
        value=watch.reads,
    )
    yield CounterMetricFamily(
        "jobkeeper_watch_gaps",
        "Watchers cut off (too far behind, or their job expired) that re-read their history.",
        value=watch.gaps,
    )
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:  # collected outside the event loop (a test, a REPL)
        return
    yield GaugeMetricFamily("jobkeeper_asyncio_tasks", "asyncio tasks of this process.", tasks)
