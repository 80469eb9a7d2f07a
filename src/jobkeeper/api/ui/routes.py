"""The dashboard's routes: server-rendered pages, two event streams and the buttons' POSTs.

``ui_router(caller=...)`` builds them around a ``Caller`` dependency: the application's own when
it is mounted in an app, or (``caller=None``, what ``jobkeeper serve`` does) the API-key sign-in
of ``session.KeySessions``. Every page is thin: ask the manager, render a template.
"""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, pass_context, select_autoescape
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException

from jobkeeper.api.deps import CallerDependency, ServicesDep
from jobkeeper.api.inbox import (
    INBOX_CURSOR_PATTERN,
    ClaimIn,
    IfMatch,
    if_match_version,
    question_json,
)
from jobkeeper.api.problems import STATUS, ApiProblem, problem
from jobkeeper.api.schemas import CURSOR_PATTERN, AnswerIn, iso
from jobkeeper.api.ui.inbox import addressed_to, waiting_for
from jobkeeper.api.ui.live import LiveJobs, live_row
from jobkeeper.api.ui.session import KeySessions, RequireUiHeader, sign_out
from jobkeeper.api.ui.timeline import describe
from jobkeeper.domain.questions import Question
from jobkeeper.domain.status import TERMINAL, JobStatus
from jobkeeper.domain.values import Caller, Job
from jobkeeper.errors import InvalidAnswer, JobkeeperError
from jobkeeper.manager import JobManager

__all__ = ["ui_router"]

SSE_PING_SECONDS = 15
LIVE_WORKER_SECONDS = 90.0
PAGE_SIZE = 50
MAX_SHOWN = 100  # the most rows a page asks the live stream to start with
# every page: nothing but this origin's own files (no CDN, no inline script), never framed
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none';"
    " base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
_STATUSES = [s.value for s in JobStatus]


@dataclass(frozen=True, slots=True)
class Listing:
    """Where a listing page starts: a kind (``None``: any) and a keyset cursor."""

    kind: str | None
    cursor: str | None


async def _listing(
    kind: Annotated[str, Query(max_length=128)] = "",
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
) -> Listing:
    # an empty kind (the filter form's "any") is no filter; the manager refuses a malformed one
    return Listing(kind or None, cursor)


ListingDep = Annotated[Listing, Depends(_listing)]


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("jobkeeper.api.ui") / "static"
    return {
        item.name: (item.read_bytes(), _STATIC_TYPES[suffix])
        for item in folder.iterdir()
        if (suffix := "." + item.name.rpartition(".")[2]) in _STATIC_TYPES
    }


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=PackageLoader("jobkeeper.api.ui", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["path_for"] = _path_for
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
    env.filters["iso"] = iso
    env.globals["describe"] = describe
    env.filters["percent"] = lambda job: (
        None if job.progress.fraction is None else round(job.progress.fraction * 100)
    )
    return Jinja2Templates(env=env)


def ui_router(caller: CallerDependency | None = None, *, prefix: str = "/ui") -> APIRouter:
    """The dashboard, at ``prefix``.

    ``caller`` is a FastAPI dependency returning the ``Caller`` (who is asking, in which tenant):
    an application's own sign-in decides who uses the dashboard. ``None`` is ``jobkeeper
    serve``'s: a page where a person enters an API key once, kept as a signed session cookie.
    The application's lifespan must be jobkeeper's (``jobkeeper.api.lifespan``).
    """
    sessions: KeySessions | None = None
    if caller is None:
        sessions = KeySessions()
        caller = sessions.caller
    who = Depends(caller)
    templates = _templates()
    static = _static_files()
    hubs: dict[int, tuple[JobManager, LiveJobs]] = {}  # one per manager (lifespan)
    router = APIRouter(prefix=prefix, include_in_schema=False)

    def hub(jobs: JobManager) -> LiveJobs:
        found = hubs.get(id(jobs))
        if found is None or found[0] is not jobs:  # a new lifespan's manager
            found = hubs[id(jobs)] = (jobs, LiveJobs(jobs))
        return found[1]

    def page(request: Request, name: str, me: Caller | None, **context: Any) -> Response:
        context.update(caller=me, sign_out=sessions is not None, statuses=_STATUSES)
        return templates.TemplateResponse(request, name, context, headers=_HEADERS)

    def shown(route: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        """A page whose typed errors (a job not found, a malformed filter) are a page too,
        whatever error handlers the application has."""

        @functools.wraps(route)
        async def run(*args: Any, **kwargs: Any) -> Response:
            try:
                return await route(*args, **kwargs)
            except JobkeeperError as exc:
                response = page(kwargs["request"], "error.html", kwargs["me"], error=exc)
                response.status_code = STATUS.get(exc.code, 500)
                return response

        return run

    @router.get("/static/{name}", name="ui_static")
    async def asset(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, "no such file")
        body, media_type = static[name]
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @router.get("", name="ui_jobs")
    @shown
    async def jobs_page(
        request: Request,
        svc: ServicesDep,
        where: ListingDep,
        me: Caller = who,
        status: Annotated[str, Query(max_length=32)] = "",
        q: Annotated[str, Query(max_length=64)] = "",
    ) -> Response:
        """Jobs of the tenant, filtered by status and kind (empty: any; the manager refuses
        a malformed one); ``q`` finds a job by its id."""
        if q:
            found = await _find(svc.jobs, me, q.strip())
            if found is not None:
                target = request.url_for("ui_job", job_id=str(found.id)).path
                return RedirectResponse(target, 303)
        counts = await svc.jobs.counts(tenant=me.tenant)
        listing = await svc.jobs.list(
            tenant=me.tenant,
            status=status or None,
            kind=where.kind,
            cursor=where.cursor,
            limit=PAGE_SIZE,
        )
        return page(
            request,
            "jobs.html",
            me,
            jobs=listing.items,
            next_cursor=listing.next_cursor,
            first_page=where.cursor is None,
            per_status={status.value: n for status, n in counts.per_status().items()},
            cap=counts.cap,
            kinds=sorted({kind for kind, _ in counts.live}),
            status=status,
            kind=where.kind,
            q=q,
            not_found=bool(q),
        )

    @router.get("/jobs/{job_id}", name="ui_job")
    @shown
    async def job_page(
        job_id: str, request: Request, svc: ServicesDep, me: Caller = who
    ) -> Response:
        """One job: state, progress, data, history, lease; cancel and pin."""
        job = await svc.jobs.get(job_id, tenant=me.tenant, consistency="strong")
        leases = await svc.jobs.leases([job.id], tenant=me.tenant)
        history = await svc.jobs.events(job.id, tenant=me.tenant)
        return page(
            request,
            "job.html",
            me,
            job=job,
            lease=leases.get(job.id),
            events=history,
            terminal=job.status in TERMINAL,
        )

    @router.get("/inbox", name="ui_inbox")
    @shown
    async def inbox_page(
        request: Request,
        svc: ServicesDep,
        me: Caller = who,
        kind: Annotated[str, Query(max_length=128)] = "",
        assignee: Annotated[str, Query(max_length=205)] = "",
        cursor: Annotated[str | None, Query(pattern=INBOX_CURSOR_PATTERN)] = None,
    ) -> Response:
        """The questions the caller may answer, oldest deadline first, each with a form from its
        schema, who it is for and who holds it; filtered by kind and assignee (empty: any)."""
        inbox = await waiting_for(
            svc.jobs, me, kind=kind or None, assignee=assignee or None, cursor=cursor
        )
        return page(
            request,
            "inbox.html",
            me,
            inbox=inbox,
            kind=kind,
            assignee=assignee,
            first_page=cursor is None,
            addressees=addressed_to(me),
        )

    @router.get("/workers", name="ui_workers")
    @shown
    async def workers_page(request: Request, svc: ServicesDep, me: Caller = who) -> Response:
        """Live workers, the tenant's queue by kind, the change feed's health."""
        counts = await svc.jobs.counts(tenant=me.tenant)
        live = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING_INPUT)
        by_kind: dict[str, dict[str, int]] = {}
        for (kind, job_status), n in sorted(counts.live.items()):
            by_kind.setdefault(kind, {s.value: 0 for s in live})[job_status.value] = n
        # the open questions per kind, as the questions_waiting metric counts them
        questions = {
            kind: n
            for tenant, kind, n in sorted(await svc.jobs.waiting_questions())
            if tenant == me.tenant
        }
        return page(
            request,
            "workers.html",
            me,
            workers=await svc.jobs.workers.live(LIVE_WORKER_SECONDS),
            by_kind=by_kind,
            questions=questions,
            waiting=sum(questions.values()),
            feed=svc.jobs.feed_status(),
        )

    @router.get("/live", name="ui_live")
    async def live(
        svc: ServicesDep,
        me: Caller = who,
        ids: Annotated[str, Query(max_length=MAX_SHOWN * 37)] = "",
    ) -> Response:
        """The tenant's jobs as they change (SSE ``job`` events: one row each), starting with
        the current rows of ``ids`` (the jobs the page shows, comma-separated), so a change
        between the page's render and this stream's start is not missed."""
        rows = hub(svc.jobs)
        shown = _job_ids(ids)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async with rows.watch(me.tenant) as queue:
                # subscribed first, read second: every later change follows
                for job in await svc.jobs.get_many(shown):
                    if job.tenant == me.tenant:
                        yield ServerSentEvent(data=json.dumps(live_row(job)), event="job")
                yield ServerSentEvent(data="{}", event="ready")
                while True:
                    job = await queue.get()
                    yield ServerSentEvent(data=json.dumps(live_row(job)), event="job")

        return EventSourceResponse(stream(), ping=SSE_PING_SECONDS, headers=_HEADERS)

    @router.get("/jobs/{job_id}/events", name="ui_job_events")
    async def job_events(
        job_id: str, request: Request, svc: ServicesDep, me: Caller = who, after: int = 0
    ) -> Response:
        """The job's history after ``after``, then live (SSE), as ``GET /jobs/{id}/events``."""
        try:
            job = await svc.jobs.get(job_id, tenant=me.tenant)
        except JobkeeperError as exc:
            return problem(request, exc.code, exc.message)
        if job.terminal and after >= job.version:
            return Response(status_code=204)  # nothing follows: EventSource stops

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event in svc.jobs.watch(job.id, tenant=me.tenant, after=after):
                data = {
                    "seq": event.seq,
                    "type": event.type,
                    "at": iso(event.at),
                    "summary": describe(event.type, event.data),
                }
                yield ServerSentEvent(data=json.dumps(data), event="event", id=str(event.seq))

        return EventSourceResponse(stream(), ping=SSE_PING_SECONDS, headers=_HEADERS)

    async def act(request: Request, action: Awaitable[Job | Question]) -> Response:
        try:
            done = await action
        except JobkeeperError as exc:
            if isinstance(exc, InvalidAnswer):
                return problem(request, exc.code, exc.message, errors=exc.problems)
            return problem(request, exc.code, exc.message)
        body = question_json(done) if isinstance(done, Question) else live_row(done)
        return Response(json.dumps(body), media_type="application/json")

    @router.post("/jobs/{job_id}/answer", name="ui_answer", dependencies=[RequireUiHeader])
    async def answer(
        job_id: str,
        body: AnswerIn,
        request: Request,
        svc: ServicesDep,
        me: Caller = who,
        if_match: IfMatch = None,
    ) -> Response:
        """Answer the job's question (the inbox's forms) in the version the page showed
        (``If-Match``); a refused answer is a problem: ``invalid_answer``, 409
        ``question_claimed`` (someone else holds it), 412 (the question changed since)."""
        try:  # a problem here too, whatever error handlers the application has
            expected = if_match_version(if_match)
        except ApiProblem as exc:
            return problem(request, exc.code, exc.detail)
        answered = svc.jobs.answer(
            job_id,
            tenant=me.tenant,
            answer=body.answer,
            answered_by=me.principal,
            question_key=body.question_key,
            expected_version=expected,
        )
        return await act(request, answered)

    @router.post("/jobs/{job_id}/question/claim", name="ui_claim", dependencies=[RequireUiHeader])
    async def claim(
        job_id: str,
        request: Request,
        svc: ServicesDep,
        me: Caller = who,
        body: Annotated[ClaimIn | None, Body()] = None,
    ) -> Response:
        """Hold the question (the inbox's Claim; ``{"takeover": true}``: Take over); the
        question as it is now, or a problem (409 while someone else holds it)."""
        takeover = body is not None and body.takeover
        held = svc.jobs.claim_question(job_id, me.tenant, me.principal, takeover=takeover)
        return await act(request, held)

    @router.post(
        "/jobs/{job_id}/question/release", name="ui_release", dependencies=[RequireUiHeader]
    )
    async def release(
        job_id: str, request: Request, svc: ServicesDep, me: Caller = who
    ) -> Response:
        """Give the question back (the inbox's Release)."""
        return await act(request, svc.jobs.release_question(job_id, me.tenant, me.principal))

    @router.post("/jobs/{job_id}/{action}", name="ui_job_action", dependencies=[RequireUiHeader])
    async def job_action(
        job_id: str, action: str, request: Request, svc: ServicesDep, me: Caller = who
    ) -> Response:
        """Cancel, pin or unpin (the job page's buttons)."""
        operations = {
            "cancel": lambda: svc.jobs.cancel(job_id, tenant=me.tenant, cancelled_by=me.principal),
            "pin": lambda: svc.jobs.pin(job_id, tenant=me.tenant),
            "unpin": lambda: svc.jobs.unpin(job_id, tenant=me.tenant),
        }
        if action not in operations:
            raise HTTPException(404, "no such action")
        return await act(request, operations[action]())

    if sessions is not None:
        _sign_in_routes(router, sessions, page)
    return router


def _sign_in_routes(
    router: APIRouter, sessions: KeySessions, page: Callable[..., Response]
) -> None:
    @router.get("/login", name="ui_sign_in")
    async def sign_in_page(
        request: Request, next: Annotated[str, Query(max_length=2048)] = ""
    ) -> Response:
        """The sign-in page: an API key, entered once."""
        home = request.url_for("ui_jobs").path
        # only a path of this dashboard: never an open redirect
        target = next if next.startswith(home) and not next.startswith("//") else home
        return page(request, "login.html", None, next=target)

    @router.post("/login", name="ui_sign_in_post", dependencies=[RequireUiHeader])
    async def sign_in(request: Request, svc: ServicesDep) -> Response:
        """Exchange an API key (JSON ``{"key": ...}``) for a session cookie (204)."""
        try:
            body = await request.json()
            key = body["key"] if isinstance(body, dict) else None
        except ValueError:
            key = None
        if not isinstance(key, str) or not key.strip() or len(key) > 200:
            raise ApiProblem("unauthorized", "enter an API key")
        return await sessions.sign_in(request, svc, key)

    @router.post("/logout", name="ui_sign_out", dependencies=[RequireUiHeader])
    async def sign_out_route(request: Request) -> Response:
        """Forget the session cookie."""
        return sign_out(request)


@pass_context
def _path_for(context: Mapping[str, Any], name: str, /, **params: Any) -> str:
    """A route's path (not its absolute URL: right behind a proxy that terminates TLS)."""
    request: Request = context["request"]
    return request.url_for(name, **params).path


def _job_ids(text: str) -> list[uuid.UUID]:
    """The job ids in a comma-separated list (anything else in it is ignored)."""
    found = []
    for part in text.split(",")[:MAX_SHOWN]:
        with contextlib.suppress(ValueError):
            found.append(uuid.UUID(part.strip()))
    return found


async def _find(jobs: JobManager, me: Caller, text: str) -> Job | None:
    """The caller's job with this id, if ``text`` is one."""
    try:
        job_id = uuid.UUID(text)
    except ValueError:
        return None
    try:
        return await jobs.get(job_id, tenant=me.tenant)
    except JobkeeperError:
        return None
