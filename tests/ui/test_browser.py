"""The dashboard in headless chromium against a real server and a real worker process: live rows,
a job's page, cancel, the inbox's generated forms (client checks, the server's refusal shown
inline, the job resuming), claims and takeovers between two people, an escalation on screen,
the audit trail on the timeline, workers and health, sign-in, and an offline /docs. Every page
is screenshotted (``JOBKEEPER_UI_SCREENSHOTS`` keeps them; docs/img/ holds the chosen ones)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job
from support import eventually

from .conftest import (
    EXPECT_MS,
    TENANT,
    Offline,
    Served,
    as_person,
    new_context,
    sign_in,
)
from .ui_tasks import REVIEW

pytestmark = pytest.mark.timeout(90)


async def submit(served: Served, kind: str, payload: Any) -> Job:
    return await served.jobs.submit(TENANT, kind, payload)


async def status_of(served: Served, job: Job, status: JobStatus) -> Job | None:
    found = await served.jobs.get(job.id, tenant=TENANT, consistency="strong")
    return found if found.status is status else None


def gate(served: Served, name: str) -> str:
    return str(served.gates / name)


async def shot(page: Page, served: Served, name: str) -> None:
    await page.screenshot(path=served.screenshots / f"{name}.png", full_page=True)


async def live(page: Page) -> None:
    """Wait until the page follows the live rows (its stream is open)."""
    await page.wait_for_selector("body[data-live-ready]", state="attached")


async def test_a_job_progresses_live_in_the_list_and_on_its_page(
    page: Page, served: Served, workers: Any
) -> None:
    await live(page)
    await page.evaluate("window.stayed = true")  # gone if the page reloads
    job = await submit(served, workers.kind("steps"), {"gate": gate(served, "steps")})
    row = page.locator(f'tr[data-job-id="{job.id}"]')
    # the row arrives and moves through running to 60 % without a reload
    await expect(row.locator('[data-field="percent"]')).to_have_text("60%", timeout=EXPECT_MS)
    await expect(row.locator('[data-field="message"]')).to_have_text("matching 60 of 100 entries")
    await expect(row.locator('[data-field="status"]')).to_have_text("running")
    assert await page.evaluate("window.stayed") is True
    await expect(page.locator('[data-count="running"]')).to_have_text("1")  # followed live
    await shot(page, served, "jobs")

    await row.get_by_role("link").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text(workers.kind("steps"))
    await expect(page.locator("#job [data-field=status]")).to_have_text("running")
    await expect(page.locator(".facts")).to_contain_text("pid")  # the worker holding the lease
    await page.evaluate("window.stayed = true")
    (served.gates / "steps").touch()
    await expect(page.locator("#job [data-field=status]")).to_have_text("succeeded")
    await expect(page.locator("#timeline")).to_contain_text("succeeded")
    await expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    assert await page.evaluate("window.stayed") is True
    # the result arrives with the end, open
    await expect(page.locator("details.json[open]")).to_contain_text('"matched": 100')
    await shot(page, served, "job")


async def test_cancel_and_pin_from_the_job_page(page: Page, served: Served, workers: Any) -> None:
    job = await submit(served, workers.kind("hold"), None)
    await page.goto(served.url(f"/ui/jobs/{job.id}"))
    await expect(page.locator("#job [data-field=status]")).to_have_text("running")
    await page.get_by_role("button", name="Pin", exact=True).click()
    await expect(page.get_by_role("button", name="Unpin")).to_be_visible()
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.locator("#job [data-field=status]")).to_have_text("cancelled")
    await expect(page.locator("#timeline")).to_contain_text("cancelled")
    found = await served.jobs.get(job.id, tenant=TENANT, consistency="strong")
    assert found.status is JobStatus.CANCELLED and found.pinned
    history = await served.jobs.events(job.id, tenant=TENANT)
    asked = [e.data for e in history if e.type in ("cancel_requested", "cancelled")]
    assert asked[0]["cancelled_by"].startswith("api-key:"), history  # who, never the key


async def test_answering_a_question_wrongly_then_rightly_resumes_the_job(
    page: Page, served: Served, workers: Any
) -> None:
    await page.get_by_role("link", name="Inbox").click()
    await expect(page.get_by_text("Nothing waits for you.")).to_be_visible()
    await live(page)
    job = await submit(
        served,
        workers.kind("review"),
        {"amount": 120, "customer": "Ada", "gate": gate(served, "review")},
    )
    # the question arrives while the inbox is open: the page says so
    await page.get_by_role("link", name="A new question is waiting: show it").click()
    await eventually(lambda: status_of(served, job, JobStatus.WAITING_INPUT), what="a question")
    card = page.locator(f'article.question[data-job-id="{job.id}"]')
    await expect(card.get_by_role("heading")).to_have_text("Refund 120 EUR to Ada?")
    await expect(card.locator("[data-deadline]")).to_have_text(re.compile(r"\d+ min \d+ s left"))
    approve = card.get_by_label("Approve the refund")
    await expect(approve).not_to_be_checked()
    # a rejection without a reason fits the form but not the schema: the server says why
    await card.get_by_role("button", name="Answer").click()
    problem = card.locator(".problem")
    await expect(problem).to_be_visible()
    await expect(problem).to_contain_text("'reason' is a required property")
    await shot(page, served, "inbox")
    assert (await status_of(served, job, JobStatus.WAITING_INPUT)) is not None

    await card.get_by_label("Reason").fill("a duplicate charge")
    await card.get_by_role("button", name="Answer").click()
    resumed = card.locator(".resumed")
    await expect(resumed).to_be_visible()
    await expect(problem).to_be_hidden()
    await expect(resumed.locator("[data-field=message]")).to_have_text("refunding")
    (served.gates / "review").touch()
    await expect(resumed.locator("[data-field=status]")).to_have_text("succeeded")
    done = await served.jobs.get(job.id, tenant=TENANT, consistency="strong")
    assert done.result == {
        "refunded": False,
        "answer": {"approve": False, "reason": "a duplicate charge"},
    }
    assert REVIEW["required"] == ["approve"]


async def test_a_question_whose_deadline_passes_leaves_the_inbox_live(
    page: Page, served: Served, workers: Any
) -> None:
    job = await submit(served, workers.kind("brief"), {"timeout": 3})
    await eventually(lambda: status_of(served, job, JobStatus.WAITING_INPUT), what="a question")
    await page.goto(served.url("/ui/inbox"))
    card = page.locator(f'article.question[data-job-id="{job.id}"]')
    await expect(card.locator("[data-deadline]")).to_have_text("deadline passed")
    outcome = card.locator(".resumed")
    await expect(outcome).to_contain_text("No longer waiting for an answer")
    await expect(outcome.locator("[data-field=status]")).to_have_text("failed")
    await expect(card.locator("form")).to_be_hidden()
    failed = await served.jobs.get(job.id, tenant=TENANT, consistency="strong")
    assert failed.error is not None and failed.error["code"] == "input_timeout"


async def test_a_claimed_question_is_held_for_others_until_taken_over(
    page: Page, browser: Browser, served: Served, offline: Offline, workers: Any
) -> None:
    """Two people (two API keys of the tenant): one claims, the other sees it held, is refused
    while it is, takes it over, answers wrongly and then rightly; the job resumes and finishes,
    and its timeline tells who did what."""
    assert served.second is not None
    first, second = f"api-key:{served.first_id}", f"api-key:{served.second.id}"
    job = await submit(
        served,
        workers.kind("review"),
        {"amount": 75, "customer": "Grace", "gate": gate(served, "claims")},
    )
    await eventually(lambda: status_of(served, job, JobStatus.WAITING_INPUT), what="a question")
    other = await new_context(browser, offline, viewport={"width": 1280, "height": 800})
    try:
        theirs = await other.new_page()
        await sign_in(theirs, served, "/ui/inbox", key=served.second.key)
        # a second tab of the same person whose live stream is cut: its view goes stale
        stale = await other.new_page()
        await stale.route("**/ui/live*", lambda route: route.abort())
        await stale.goto(served.url("/ui/inbox"))
        await page.goto(served.url("/ui/inbox"))
        for each in (page, theirs):
            await live(each)
        mine_card, their_card, stale_card = (
            p.locator(f'article.question[data-job-id="{job.id}"]') for p in (page, theirs, stale)
        )
        await expect(their_card.locator("[data-field=holder]")).to_have_text("nobody holds it")

        await mine_card.get_by_role("button", name="Claim").click()
        await expect(mine_card.locator("[data-field=holder]")).to_have_text(
            re.compile(r"^held by you until \d")
        )
        await expect(mine_card.get_by_role("button", name="Release")).to_be_visible()
        # the other person sees it held, live, and cannot fill the form
        await expect(their_card.locator("[data-field=holder]")).to_have_text(
            re.compile(rf"^held by {first} until \d")
        )
        await expect(their_card.get_by_label("Approve the refund")).to_be_disabled()
        await expect(their_card.get_by_role("button", name="Answer")).to_be_disabled()
        await expect(their_card.get_by_role("button", name="Claim")).to_be_hidden()
        await shot(theirs, served, "inbox-held")

        # the stale tab still offers the form: the server refuses the answer, inline
        await expect(stale_card.locator("[data-field=holder]")).to_have_text("nobody holds it")
        await stale_card.get_by_label("Approve the refund").check()
        await stale_card.get_by_role("button", name="Answer").click()
        refusal = stale_card.locator(".problem")
        await expect(refusal).to_contain_text(f"is held by {first} until")
        await stale_card.locator(".problem").get_by_role("button", name="Reload").click()
        await expect(stale_card.locator("[data-field=holder]")).to_have_text(
            re.compile(rf"^held by {first} until")
        )
        assert (await status_of(served, job, JobStatus.WAITING_INPUT)) is not None

        # taking over asks first; dismissed, nothing happens
        their_takeover = their_card.get_by_role("button", name="Take over")
        theirs.once("dialog", lambda dialog: dialog.dismiss())
        await their_takeover.click()
        await expect(their_card.get_by_role("button", name="Answer")).to_be_disabled()
        theirs.once("dialog", lambda dialog: dialog.accept())
        await their_takeover.click()
        await expect(their_card.locator("[data-field=holder]")).to_have_text(
            re.compile(r"^held by you until")
        )
        # ... and the first person sees it taken, live
        await expect(mine_card.locator("[data-field=holder]")).to_have_text(
            re.compile(rf"^held by {second} until")
        )
        await expect(mine_card.get_by_role("button", name="Answer")).to_be_disabled()

        # a rejection without a reason: the schema's if/then, refused by the server, inline
        await their_card.get_by_role("button", name="Answer").click()
        problem = their_card.locator(".problem")
        await expect(problem).to_contain_text("'reason' is a required property")
        await their_card.get_by_label("Reason").fill("no receipt")
        await their_card.get_by_role("button", name="Answer").click()
        resumed = their_card.locator(".resumed")
        await expect(resumed.locator("[data-field=message]")).to_have_text("refunding")
        await expect(mine_card.locator(".resumed")).to_contain_text("No longer waiting")
        (served.gates / "claims").touch()
        await expect(resumed.locator("[data-field=status]")).to_have_text("succeeded")
        done = await served.jobs.get(job.id, tenant=TENANT, consistency="strong")
        (answered,) = done.answers.values()
        assert answered["answered_by"] == second

        # the job's timeline: who claimed, took over and answered, from which replica
        await theirs.goto(served.url(f"/ui/jobs/{job.id}"))
        timeline = theirs.locator("#timeline")
        await expect(timeline).to_contain_text(re.compile(rf"claimed by {first} until \d"))
        await expect(timeline).to_contain_text(f"taken over by {second} from {first}")
        await expect(timeline).to_contain_text(
            re.compile(rf"answered by {second} \(from \S+:\d+\)")
        )
        await shot(theirs, served, "job-audit")
    finally:
        await other.close()


async def test_a_question_escalates_on_screen(
    browser: Browser, team: str, offline: Offline, served: Served, workers: Any
) -> None:
    """In an application with its own sign-in (people with roles): a question for underwriters
    reaches Alice; at its deadline it escalates to managers: on Alice's screen it changes (her
    answer to the old version is refused, 412) and it appears for Carol, who answers it."""
    alice = await as_person(browser, offline, team, "alice")
    carol = await as_person(browser, offline, team, "carol")
    try:
        for each in (alice, carol):
            await each.goto(f"{team}/team/inbox")
            await live(each)
        job = await submit(
            served,
            workers.kind("escalating"),
            {"assignee": "role:underwriter", "to": "role:manager", "timeout": 6},
        )
        # the question is for underwriters: Alice is told, Carol is not
        await alice.get_by_role("link", name="A new question is waiting: show it").click()
        card = alice.locator(f'article.question[data-job-id="{job.id}"]')
        await expect(card.locator("[data-field=assignee]")).to_have_text("role:underwriter")
        await expect(carol.locator("#inbox-new")).to_be_hidden()
        await expect(carol.locator("#inbox-empty")).to_be_visible()

        # the deadline passes: the question goes to managers, live on both screens
        await expect(card.locator("[data-field=assignee]")).to_have_text(
            "role:manager", timeout=EXPECT_MS + 6_000
        )
        await expect(card.locator(".changed")).to_contain_text("it is now for role:manager")
        await expect(card.locator("[data-deadline]")).to_have_text(re.compile(r"^9 min \d+ s left"))
        await card.get_by_label("Approve").check()
        await card.get_by_role("button", name="Answer").click()  # the version Alice read
        await expect(card.locator(".problem")).to_contain_text("changed: expected version")
        await expect(card.locator(".problem").get_by_role("button", name="Reload")).to_be_visible()
        await shot(alice, served, "inbox-escalated")

        await carol.get_by_role("link", name="A new question is waiting: show it").click()
        theirs = carol.locator(f'article.question[data-job-id="{job.id}"]')
        await expect(theirs.locator("[data-field=assignee]")).to_have_text("role:manager")
        await expect(theirs.locator("[data-deadline]")).to_have_text(re.compile(r"\d+ min"))
        await theirs.get_by_role("button", name="Claim").click()
        await expect(theirs.locator("[data-field=holder]")).to_have_text(
            re.compile(r"^held by you until")
        )
        await theirs.get_by_label("Approve").check()
        await theirs.get_by_role("button", name="Answer").click()
        await expect(theirs.locator(".resumed [data-field=status]")).to_have_text("succeeded")
        done = await served.jobs.get(job.id, tenant=TENANT, consistency="strong")
        assert done.result == {"approve": True}
        history = await served.jobs.events(job.id, tenant=TENANT)
        (escalated,) = [e.data for e in history if e.type == "escalated"]
        assert (escalated["from"], escalated["to"]) == ("role:underwriter", "role:manager")
        await carol.goto(f"{team}/team/jobs/{job.id}")
        await expect(carol.locator("#timeline")).to_contain_text(
            "escalated from role:underwriter to role:manager"
        )
    finally:
        await alice.context.close()
        await carol.context.close()


FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean", "title": "Looks right"},
        "tier": {"enum": ["gold", "silver", 3]},
        "email": {"type": "string", "format": "email"},
        "code": {"type": "string", "minLength": 3, "maxLength": 5, "pattern": "^[A-Z]+$"},
        "count": {"type": "integer", "minimum": 1, "maximum": 10},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "day": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "zip": {"type": "integer"}},
            "required": ["city"],
        },
        "note": {"type": "string"},
    },
    "required": ["ok", "tier", "email", "code", "count", "tags", "address"],
    "additionalProperties": False,
}


async def test_the_form_covers_the_schema_and_checks_in_the_browser(
    page: Page, served: Served, workers: Any
) -> None:
    job = await submit(served, workers.kind("form"), {"schema": FORM_SCHEMA})
    simple = await submit(
        served, workers.kind("form"), {"schema": {"enum": ["yes", "no"], "description": "Go?"}}
    )
    for waiting in (job, simple):
        await eventually(
            lambda w=waiting: status_of(served, w, JobStatus.WAITING_INPUT), what="asked"
        )
    await page.goto(served.url("/ui/inbox"))
    card = page.locator(f'article.question[data-job-id="{job.id}"]')
    form = card.locator("form")
    # each kind of field has its control and the constraints HTML can check
    await expect(card.get_by_label("Looks right")).to_have_attribute("type", "checkbox")
    await expect(card.get_by_label("Tier")).to_have_js_property("tagName", "SELECT")
    await expect(card.get_by_label("Email")).to_have_attribute("type", "email")
    code = card.get_by_label("Code")
    await expect(code).to_have_attribute("maxlength", "5")
    await expect(code).to_have_attribute("pattern", "^[A-Z]+$")
    await expect(card.get_by_label("Count")).to_have_attribute("max", "10")
    await expect(card.get_by_label("Day")).to_have_attribute("type", "date")
    await expect(card.locator("fieldset.group legend")).to_contain_text("Address")
    await expect(card.get_by_role("group", name="Tags").get_by_role("checkbox")).to_have_count(3)

    # the browser refuses what the schema refuses, before anything is sent
    await card.get_by_label("Email").fill("not an email")
    await card.get_by_role("button", name="Answer").click()
    assert await card.get_by_label("Email").evaluate("el => !el.validity.valid")
    await card.get_by_label("Email").fill("ada@example.org")
    await card.get_by_label("Tier").select_option(label="3")
    await code.fill("ab")
    await card.get_by_role("button", name="Answer").click()
    assert await code.evaluate("el => !el.validity.valid")
    await code.fill("ABC")
    await card.get_by_label("Count").fill("4")
    await card.get_by_label("City").fill("Lyon")
    await card.get_by_role("button", name="Answer").click()
    await expect(card.get_by_role("group", name="Tags").locator(".error")).to_have_text(
        "Pick at least 1."
    )
    await card.get_by_label("green").check()
    await card.get_by_label("blue").check()
    await card.get_by_label("Ratio").fill("0")  # exclusiveMinimum: the script refuses it
    await card.get_by_role("button", name="Answer").click()
    await expect(card.get_by_label("Ratio")).to_have_attribute("aria-invalid", "true")
    await card.get_by_label("Ratio").fill("0.5")
    await card.get_by_label("Looks right").check()
    await card.get_by_label("Zip").fill("69001")
    await card.get_by_label("Day").fill("2026-12-24")
    await shot(page, served, "form")
    await card.get_by_role("button", name="Answer").click()
    await expect(card.locator(".resumed")).to_be_visible()
    done = await eventually(lambda: status_of(served, job, JobStatus.SUCCEEDED), what="done")
    assert json.loads(json.dumps(done.result)) == {
        "ok": True,
        "tier": 3,
        "email": "ada@example.org",
        "code": "ABC",
        "count": 4,
        "ratio": 0.5,
        "day": "2026-12-24",
        "tags": ["green", "blue"],
        "address": {"city": "Lyon", "zip": 69001},
    }

    # a schema that is one enum is one choice; the answer is the value itself
    other = page.locator(f'article.question[data-job-id="{simple.id}"]')
    await other.get_by_label("Answer").select_option('"no"')
    await other.get_by_role("button", name="Answer").click()
    finished = await eventually(lambda: status_of(served, simple, JobStatus.SUCCEEDED), what="done")
    assert finished.result == "no"
    await expect(form).to_be_hidden()


async def test_workers_and_health(page: Page, served: Served, workers: Any) -> None:
    await page.get_by_role("link", name="Workers").click()
    worker = workers.started[0]
    await expect(page.locator("#health")).to_contain_text(str(worker.pid))
    await expect(page.locator("#health")).to_contain_text("Connected")
    await expect(page.get_by_role("heading", name="Queue by kind")).to_be_visible()
    waiting = await submit(served, workers.kind("form"), {"schema": {"type": "boolean"}})
    await eventually(lambda: status_of(served, waiting, JobStatus.WAITING_INPUT), what="asked")
    await page.reload()
    # the open questions per kind, as the metrics count them
    await expect(page.locator(f'[data-questions="{workers.kind("form")}"]')).to_have_text(
        re.compile(r"^[1-9]\d*$")
    )
    await shot(page, served, "workers")
    await served.jobs.cancel(waiting.id, tenant=TENANT)


async def test_a_phone_sees_one_column(browser: Browser, served: Served, offline: Offline) -> None:
    context = await new_context(browser, offline, viewport={"width": 390, "height": 844})
    try:
        page = await context.new_page()
        await sign_in(page, served)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, "the page scrolls sideways on a phone"
        await shot(page, served, "jobs-phone")
    finally:
        await context.close()


async def test_sign_in_session_and_csrf(browser: Browser, served: Served, offline: Offline) -> None:
    context = await new_context(browser, offline)
    try:
        page = await context.new_page()
        await page.goto(served.url("/ui/inbox"))
        await expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Finbox$"))
        await page.get_by_label("API key").fill("jk_not-a-key")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_contain_text("unknown or revoked")
        await shot(page, served, "sign-in")
        await page.get_by_label("API key").fill(served.key)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(served.url("/ui/inbox"))
        (cookie,) = await context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert served.key not in json.dumps(cookie), "the key itself is in the cookie"
        # a request with the cookie but without the dashboard's header is refused (CSRF)
        async with httpx.AsyncClient(base_url=served.base) as http:
            job = await submit(served, "nobody.serves.this", None)
            http.cookies.set(cookie["name"], cookie["value"])
            refused = await http.post(f"/ui/jobs/{job.id}/cancel")
            assert refused.status_code == 400
            cancelled = await http.post(
                f"/ui/jobs/{job.id}/cancel", headers={"X-Jobkeeper-UI": "1"}
            )
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        await page.get_by_role("button", name="Sign out").click()  # then to the jobs page ...
        await expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui$"))  # ... refused
        assert await context.cookies() == []
    finally:
        await context.close()


async def test_docs_work_offline(browser: Browser, served: Served, offline: Offline) -> None:
    async with httpx.AsyncClient(base_url=served.base) as http:
        html = (await http.get("/docs")).text
    hosts = set(re.findall(r"(?:src|href)=['\"](?:https?:)?//([^/'\"]+)", html))
    assert not hosts, f"/docs loads from {hosts}"
    context = await new_context(browser, offline)
    try:
        page = await context.new_page()
        await page.goto(served.url("/docs"))
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text("jobkeeper")
        await expect(page.get_by_text("/jobs/{job_id}/cancel").first).to_be_visible()
    finally:
        await context.close()
