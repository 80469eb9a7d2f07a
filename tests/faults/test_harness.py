"""The fault suite's bounded subset, run in CI: 2 replicas, 3 workers and a client over HTTP, a
few hundred jobs while workers are killed with SIGKILL or stopped with SIGSTOP past their lease
(so they wake up holding leases that others took over); the checker's invariants must all hold
(docs/reliability.md). ``make faults`` runs the full set (``test_harness_full.py``)."""

from __future__ import annotations

from pathlib import Path

from .harness.scenario import Scenario, run_scenario

CI = Scenario("ci", jobs=300, rate=25.0, faults=("kill_worker", "stop_worker"), interval=3.0)


async def test_the_invariants_hold_under_killed_and_stopped_workers(
    postgres_server_url: str, template_database: str, tmp_path: Path
) -> None:
    report = await run_scenario(CI, postgres_server_url, template_database, tmp_path)
    assert report.held, report.summary()
    figures = report.figures
    assert figures["acknowledged"] == CI.jobs and figures["lost"] == 0
    assert figures["faults"]["kill_worker"] >= 1 and figures["faults"]["stop_worker"] >= 1
    assert figures["races"] > 0 and figures["replica_reads"] > 0
