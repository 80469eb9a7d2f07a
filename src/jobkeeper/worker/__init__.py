"""Workers: claim jobs, run their handlers under fenced leases, and record what happened.

```python
tasks = TaskRegistry()

@tasks.task("convert_pdf")
async def convert(ctx: JobContext, payload: dict) -> dict: ...

worker = Worker(jobs, tasks, concurrency=4)
await worker.run()        # until worker.stop(); SIGTERM/SIGINT with install_signal_handlers()
```

* **Claims** take up to the free slots at once (``FOR UPDATE SKIP LOCKED``), woken by the change
  feed when a job is queued, with a polling fallback; no busy loop when idle.
* **Leases** are renewed by one heartbeat statement for all of the worker's jobs. Every write a
  worker makes presents its lease token, so a worker whose lease was taken over (it was paused,
  cut off or too slow to heartbeat) can overwrite nothing: it learns so and stops the handler.
* **Recovery** needs no janitor: every worker re-queues jobs whose lease expired, with backoff.
* **Cancellation** reaches the handler through the change feed (heartbeat responses as fallback):
  an async handler's task is cancelled; a sync handler sees ``ctx.cancelled`` and stops at its next
  ``ctx.raise_if_cancelled()``.
* **Progress** is coalesced: ``ctx.progress()`` only records, and at most one write per job per
  ``progress_interval`` reaches Postgres.
* **Shutdown**: ``stop()`` stops claiming, lets handlers finish for ``shutdown_grace`` seconds, then
  releases the remaining leases (the jobs are queued again, the attempt not counted); a second
  ``stop()`` (a second signal) releases at once.
* **Schedules**: ``@tasks.periodic("*/5 * * * *", timezone=...)`` on a handler; every worker
  fires the due ticks of its kinds' schedules (``scheduler``), and Postgres keeps it to exactly
  one job per schedule and tick.
* **Questions**: ``await ctx.ask(...)`` parks the job in ``waiting_input`` without holding a slot;
  an answer queues it again and the handler is re-invoked from the start, where ``ctx.ask``
  returns stored answers at once (replay) and ``ctx.checkpoint`` returns stored side effects.
* **Workflows**: ``await ctx.sleep(...)`` (queued again for its wake-up time), ``ctx.spawn(...)``
  (a child job, the same one on every re-run) and ``await ctx.wait_for(children)`` (parked in
  ``waiting_children`` until they all finish) park the job the same way, without a slot.

The modules: ``registry`` (kinds to handlers), ``context`` (the handler's ``JobContext`` and its
replay), ``executor`` (one job: run its handler, record its outcome) and ``worker`` (the claim,
heartbeat, completion and progress loops, and the shutdown drain), and ``scheduler`` (periodic
schedules' ticks into jobs).
"""

from jobkeeper.worker.context import JobContext
from jobkeeper.worker.registry import Task, TaskRegistry
from jobkeeper.worker.worker import Worker

__all__ = ["JobContext", "Task", "TaskRegistry", "Worker"]
