"""The loan office's API: its own auth (a bearer token per user), its own routes that create a
row and its job in one transaction, and the decision of a person answering a job's question."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from jobkeeper import JobManager
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from loanapp.models import Document, Loan, User

APPROVAL = "decision"  # the question key of a loan's approval


class DocumentIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)


class LoanIn(BaseModel):
    applicant: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)


class DecisionIn(BaseModel):
    approve: bool
    note: str = Field(default="", max_length=500)


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as opened:
        yield opened


SessionDep = Annotated[AsyncSession, Depends(session)]


def jobs_of(request: Request) -> JobManager:
    manager: JobManager = request.app.state.jobs
    return manager


JobsDep = Annotated[JobManager, Depends(jobs_of)]


async def current_user(
    db: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> User:
    """The application's own auth: its 401 is its own, whatever jobkeeper is mounted."""
    scheme, _, token = (authorization or "").partition(" ")
    user = None
    if scheme.lower() == "bearer" and token:
        user = await db.scalar(sa.select(User).where(User.token == token))
    if user is None:
        raise HTTPException(401, "who are you?", headers={"WWW-Authenticate": "Bearer"})
    return user


UserDep = Annotated[User, Depends(current_user)]


def create_app(database_url: str | None = None) -> FastAPI:
    url = database_url or os.environ["LOANAPP_DATABASE_URL"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(url, pool_size=5)
        app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
        # one configuration: jobkeeper takes the engine's URL and opens a small pool of its own
        async with await JobManager.connect(engine, pool_size=4) as jobs:
            app.state.jobs = jobs
            yield
        await engine.dispose()

    app = FastAPI(title="loan office", lifespan=lifespan)

    @app.post("/documents", status_code=201)
    async def upload(body: DocumentIn, db: SessionDep, jobs: JobsDep, user: UserDep) -> Any:
        """The document and its conversion job commit together, or neither does."""
        document = Document(office=user.office, title=body.title)
        db.add(document)
        await db.flush()  # its id, inside the session's transaction
        job = await jobs.submit(
            user.office, "convert_document", {"document_id": document.id}, connection=db
        )
        await db.commit()
        return {"id": document.id, "job_id": str(job.id)}

    @app.get("/documents/{document_id}")
    async def document(document_id: int, db: SessionDep, user: UserDep) -> Any:
        found = await db.get(Document, document_id)
        if found is None or found.office != user.office:
            raise HTTPException(404, "no such document")
        return {"id": found.id, "title": found.title, "pages": found.pages}

    @app.post("/loans", status_code=201)
    async def apply(body: LoanIn, db: SessionDep, jobs: JobsDep, user: UserDep) -> Any:
        loan = Loan(office=user.office, applicant=body.applicant, amount=body.amount)
        db.add(loan)
        await db.flush()
        payload = {"loan_id": loan.id, "amount": str(body.amount)}
        job = await jobs.submit(user.office, "assess_loan", payload, connection=db)
        loan.job_id = str(job.id)
        await db.commit()
        return {"id": loan.id, "job_id": loan.job_id}

    @app.get("/loans/{loan_id}")
    async def loan(loan_id: int, db: SessionDep, jobs: JobsDep, user: UserDep) -> Any:
        found = await db.get(Loan, loan_id)
        if found is None or found.office != user.office or found.job_id is None:
            raise HTTPException(404, "no such loan")
        job = await jobs.get(found.job_id, tenant=user.office, consistency="strong")
        return {
            "id": found.id,
            "status": found.status,
            "decided_by": found.decided_by,
            "job": {"status": job.status.value, "question": job.prompt},
        }

    @app.post("/loans/{loan_id}/decision", status_code=202)
    async def decide(
        loan_id: int, body: DecisionIn, db: SessionDep, jobs: JobsDep, user: UserDep
    ) -> Any:
        """An underwriter answers the question the loan's job asked; the job resumes."""
        if not user.underwriter:
            raise HTTPException(403, "only underwriters decide loans")
        found = await db.get(Loan, loan_id)
        if found is None or found.office != user.office or found.job_id is None:
            raise HTTPException(404, "no such loan")
        job = await jobs.answer(
            found.job_id,
            tenant=user.office,
            answer=body.model_dump(),
            answered_by=f"user:{user.name}",
            question_key=APPROVAL,
        )
        return {"job": job.status.value}

    return app
