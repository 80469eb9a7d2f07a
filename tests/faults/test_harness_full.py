"""The full fault suite (``make faults``; deselected from the normal run by the ``faults_full``
marker): each fault on its own and then all of them at once, 2,000 jobs per scenario over 2
replicas and 3 workers, every invariant of the checker asserted (docs/reliability.md).

With ``FAULTS_REPORT`` set to a folder, each scenario's figures are written there as
``<scenario>.json`` (``python -m tests.faults.harness.figures FOLDER`` prints them as the table of
docs/reliability.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .harness import pgcluster
from .harness.scenario import Scenario, run_scenario

pytestmark = [pytest.mark.faults_full, pytest.mark.timeout(900)]

JOBS = 2000
RATE = 40.0  # jobs per second: about 50 s of faults per scenario

SHARED = [
    Scenario("workers-killed", JOBS, RATE, ("kill_worker",)),
    Scenario("replicas-killed", JOBS, RATE, ("kill_replica",)),
    Scenario("worker-stopped", JOBS, RATE, ("stop_worker",)),
    Scenario("backends-terminated", JOBS, RATE, ("terminate_backends",), interval=3.0),
    Scenario(
        "everything-at-once",
        JOBS,
        RATE,
        ("kill_worker", "kill_replica", "stop_worker", "terminate_backends"),
        interval=5.0,
    ),
]
RESTARTS = Scenario("postgres-restarted", JOBS, RATE, ("restart_postgres",), interval=8.0)


def _keep(figures: dict[str, object]) -> None:
    folder = os.environ.get("FAULTS_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / f"{figures['scenario']}.json"
        path.write_text(json.dumps(figures, indent=2, default=str))


@pytest.mark.parametrize("scenario", SHARED, ids=lambda s: s.name)
async def test_the_invariants_hold(
    scenario: Scenario, postgres_server_url: str, template_database: str, tmp_path: Path
) -> None:
    report = await run_scenario(scenario, postgres_server_url, template_database, tmp_path)
    _keep(report.figures)
    assert report.held, report.summary()
    assert report.figures["acknowledged"] == scenario.jobs


async def test_the_invariants_hold_through_fast_and_immediate_postgres_restarts(
    tmp_path: Path,
) -> None:
    assert pgcluster.available(), "Debian's pg_createcluster is needed (postgresql-common)"
    async with pgcluster.own_postgres() as postgres:
        report = await run_scenario(
            RESTARTS, postgres.url, postgres.template, tmp_path, postgres=postgres
        )
    _keep(report.figures)
    assert report.held, report.summary()
    assert report.figures["acknowledged"] == RESTARTS.jobs
