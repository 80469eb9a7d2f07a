"""The loan office's jobs. Each worker process opens the application's engine once, in the
registry's lifespan, and handlers use its sessions through ``ctx.resources``; run them with
``jobkeeper worker loanapp.tasks:tasks``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from jobkeeper import JobContext, TaskRegistry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from loanapp.main import APPROVAL
from loanapp.models import Document, Loan

AUTO_APPROVE_UP_TO = Decimal("10000")


@asynccontextmanager
async def resources() -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Once per worker process: the application's own engine, closed when the worker stops."""
    engine = create_async_engine(os.environ["LOANAPP_DATABASE_URL"], pool_size=2)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


tasks = TaskRegistry(lifespan=resources)


@tasks.task("convert_document")
async def convert_document(ctx: JobContext, payload: Any) -> dict[str, int]:
    sessions: async_sessionmaker[AsyncSession] = ctx.resources
    async with sessions() as db, db.begin():
        document = await db.get(Document, payload["document_id"])
        assert document is not None  # it committed with this job
        document.pages = max(1, len(document.title.split()))
        pages = document.pages
    ctx.progress(1.0, "converted")
    return {"pages": pages}


@tasks.task("assess_loan")
async def assess_loan(ctx: JobContext, payload: Any) -> dict[str, Any]:
    """Small loans pass at once; larger ones stop and ask an underwriter (no worker slot is held
    while they think), and resume with the answer."""
    amount = Decimal(payload["amount"])
    decided_by = None
    if amount <= AUTO_APPROVE_UP_TO:
        decision = {"approve": True, "note": "within the automatic limit"}
    else:
        decision = await ctx.ask(
            f"Approve a loan of {amount}?",
            key=APPROVAL,
            schema={
                "type": "object",
                "properties": {"approve": {"type": "boolean"}, "note": {"type": "string"}},
                "required": ["approve"],
            },
            timeout=7 * 86_400,
        )
        decided_by = ctx.job.answers[APPROVAL]["answered_by"]
    sessions: async_sessionmaker[AsyncSession] = ctx.resources
    async with sessions() as db, db.begin():
        loan = await db.get(Loan, payload["loan_id"])
        assert loan is not None
        loan.status = "approved" if decision["approve"] else "declined"
        loan.decided_by = decided_by
    return {"approved": decision["approve"], "by": decided_by}
