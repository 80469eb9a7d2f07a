"""Supervised loops: a bug is logged once with its traceback and the loop starts again; it never
ends silently, and a loop that is done (returns) or cancelled is not restarted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from jobkeeper.errors import DatabaseUnavailable
from jobkeeper.supervise import supervised, while_leased


async def test_a_failing_loop_is_logged_with_its_traceback_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    starts: list[int] = []

    async def loop() -> None:
        starts.append(len(starts))
        if len(starts) < 3:
            raise RuntimeError(f"bug {len(starts)}")

    with caplog.at_level(logging.ERROR, logger="jobkeeper.supervise"):
        await asyncio.wait_for(supervised("test loop", loop), 30)
    assert starts == [0, 1, 2]
    failures = [r for r in caplog.records if "test loop failed unexpectedly" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)


async def test_a_cancelled_loop_is_not_restarted() -> None:
    started = asyncio.Event()

    async def loop() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervised("test loop", loop))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_final_write_is_retried_while_the_lease_holds_then_given_up() -> None:
    loop = asyncio.get_running_loop()
    attempts: list[float] = []

    async def flaky() -> str:
        attempts.append(loop.time())
        if len(attempts) < 3:
            raise DatabaseUnavailable("blip")
        return "written"

    assert await while_leased("write", flaky, valid_until=lambda: float("inf")) == "written"
    assert len(attempts) == 3

    async def down() -> str:
        raise DatabaseUnavailable("down")

    with pytest.raises(DatabaseUnavailable):  # the lease is over: recovery takes the job
        await while_leased("write", down, valid_until=lambda: 0.0)
