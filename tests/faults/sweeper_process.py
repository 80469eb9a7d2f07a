"""A sweeper process for ``tests/faults/test_single_sweeper.py`` (run with ``sys.executable``).

    sweeper_process.py loop URL KIND SECONDS GO_FILE OUT   sweep in a loop for SECONDS after GO_FILE
    sweeper_process.py once URL OUT                         one sweep; its report as JSON
    sweeper_process.py hold URL READY_FILE                  take the sweeper lock and sleep

``loop`` writes ``OUT + ".ready"`` once connected, waits for ``GO_FILE`` (so all processes start
together), then records every pass as ``[start_ns, end_ns, swept, held_from_ns, held_to_ns,
jobs_expired]`` with ``time.monotonic_ns`` (one clock for every process on the machine).
``held_from``/``held_to`` are taken inside the lock: after the server granted it and before the
unlock is sent, so if the lock is exclusive these windows can never overlap across processes
(``start``/``end`` can, by the round trips of the lock and unlock). The ``on_expire`` hook of KIND
records which jobs it ran for, so a job swept twice would show.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jobkeeper.domain.values import Job
from jobkeeper.maintenance import ExpiryHooks, Retention, Sweeper
from jobkeeper.manager import JobManager

DAY = 86_400.0
RETENTION = Retention(payload_ttl=DAY, job_ttl=DAY, tombstone_ttl=DAY)
WAIT_FOR_GO = 60.0


async def loop(url: str, kind: str, seconds: float, go: Path, ready: Path) -> dict[str, Any]:
    manager = await JobManager.connect(url, pool_size=3)
    try:
        hooked: list[str] = []
        hooks = ExpiryHooks()

        @hooks.on_expire(kind)
        async def remember(job: Job) -> None:
            hooked.append(str(job.id))

        window: list[int] = []
        take_lock = manager.sweep_lock

        @asynccontextmanager
        async def observed_lock(*, idle_limit: float) -> AsyncIterator[bool]:
            async with take_lock(idle_limit=idle_limit) as held:
                if held:
                    window.append(time.monotonic_ns())
                try:
                    yield held
                finally:
                    if held:
                        window.append(time.monotonic_ns())

        manager.sweep_lock = observed_lock  # type: ignore[method-assign]
        sweeper = Sweeper(manager, retention=RETENTION, hooks=hooks)
        await asyncio.to_thread(ready.write_text, "ready")
        give_up = time.monotonic() + WAIT_FOR_GO
        while not await asyncio.to_thread(go.exists):
            if time.monotonic() > give_up:
                raise SystemExit("never told to go")
            await asyncio.sleep(0.005)

        passes: list[list[Any]] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            window.clear()
            start_ns = time.monotonic_ns()
            report = await sweeper.sweep()
            end_ns = time.monotonic_ns()
            held_from, held_to = window if report.swept else (None, None)
            passes.append([start_ns, end_ns, report.swept, held_from, held_to, report.jobs_expired])
        return {"passes": passes, "hooked": hooked}
    finally:
        await manager.close()


async def once(url: str) -> dict[str, Any]:
    async with await JobManager.connect(url, pool_size=2) as manager:
        return asdict(await Sweeper(manager, retention=RETENTION).sweep())


async def hold(url: str, ready: Path, idle_limit: float) -> None:
    manager = await JobManager.connect(url, pool_size=2)
    async with manager, manager.sweep_lock(idle_limit=idle_limit) as held:
        await asyncio.to_thread(ready.write_text, json.dumps({"held": held}))
        await asyncio.sleep(300)  # until killed


def main(argv: list[str]) -> None:
    mode, url, *rest = argv
    if mode == "loop":
        kind, seconds, go, out = rest
        result = asyncio.run(loop(url, kind, float(seconds), Path(go), Path(f"{out}.ready")))
        Path(out).write_text(json.dumps(result))
    elif mode == "once":
        Path(rest[0]).write_text(json.dumps(asyncio.run(once(url))))
    elif mode == "hold":
        ready, idle_limit = rest
        asyncio.run(hold(url, Path(ready), float(idle_limit)))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
