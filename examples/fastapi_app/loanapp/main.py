"""The loan office's API: its own auth (a bearer token per user), its own routes that create a
row and its job in one transaction, the decision of a person answering a job's question, and
jobkeeper's own routes under ``/api/jobs`` on the same auth (``create_router(caller=...)``)."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jobkeeper.api import Caller, JobManagerDep, create_router, lifespan
from jobkeeper.settings import Settings
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


# the application's scheme, declared in its OpenAPI (jobkeeper's routes list it too)
bearer = HTTPBearer(auto_error=False, scheme_name="loanOfficeToken")


async def current_user(
    db: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """The application's own auth: its 401 is its own, whatever jobkeeper is mounted."""
    user = None
    if credentials is not None:
        user = await db.scalar(sa.select(User).where(User.token == credentials.credentials))
    if user is None:
        raise HTTPException(401, "who are you?", headers={"WWW-Authenticate": "Bearer"})
    return user


UserDep = Annotated[User, Depends(current_user)]


async def caller(user: UserDep) -> Caller:
    """Who calls, as jobkeeper's routes see it: the user's office is the tenant of its jobs, and
    ``user:<name>`` is what ``answered_by`` and ``cancelled_by`` record."""
    roles = frozenset({"role:underwriter"}) if user.underwriter else frozenset()
    return Caller(tenant=user.office, principal=f"user:{user.name}", roles=roles)


CallerDep = Annotated[Caller, Depends(caller)]


def create_app(database_url: str | None = None) -> FastAPI:
    url = database_url or os.environ["LOANAPP_DATABASE_URL"]

    # one configuration: jobkeeper takes the application's URL and opens a small pool of its own
    jobkeeper = lifespan(Settings(_env_file=None, database_url=url, pool_size=4))

    @asynccontextmanager
    async def both(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = create_async_engine(url, pool_size=5)
        app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
        try:
            # jobkeeper's manager, sweeper and change feed; its state reaches JobManagerDep
            async with jobkeeper(app) as state:
                yield state
        finally:
            await engine.dispose()

    app = FastAPI(title="loan office", lifespan=both)
    # jobkeeper's routes (/api/jobs/...) on the application's own auth
    app.include_router(create_router(caller=caller), prefix="/api")

    @app.post("/documents", status_code=201)
    async def upload(body: DocumentIn, db: SessionDep, jobs: JobManagerDep, user: UserDep) -> Any:
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
    async def apply(body: LoanIn, db: SessionDep, jobs: JobManagerDep, user: UserDep) -> Any:
        loan = Loan(office=user.office, applicant=body.applicant, amount=body.amount)
        db.add(loan)
        await db.flush()
        payload = {"loan_id": loan.id, "amount": str(body.amount)}
        job = await jobs.submit(user.office, "assess_loan", payload, connection=db)
        loan.job_id = str(job.id)
        await db.commit()
        return {"id": loan.id, "job_id": loan.job_id}

    @app.get("/loans/{loan_id}")
    async def loan(loan_id: int, db: SessionDep, jobs: JobManagerDep, user: UserDep) -> Any:
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
        loan_id: int, body: DecisionIn, db: SessionDep, jobs: JobManagerDep, who: CallerDep
    ) -> Any:
        """An underwriter answers the question the loan's job asked; the job resumes."""
        if "role:underwriter" not in who.roles:
            raise HTTPException(403, "only underwriters decide loans")
        found = await db.get(Loan, loan_id)
        if found is None or found.office != who.tenant or found.job_id is None:
            raise HTTPException(404, "no such loan")
        job = await jobs.answer(
            found.job_id,
            tenant=who.tenant,
            answer=body.model_dump(),
            answered_by=who.principal,
            question_key=APPROVAL,
        )
        return {"job": job.status.value}

    return app
