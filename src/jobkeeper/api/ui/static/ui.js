// jobkeeper dashboard: live rows, buttons, sign-in and the inbox's answer forms. Plain JS, no build.
"use strict";

const UI_HEADER = { "X-Jobkeeper-UI": "1" };

async function post(url, body, headers = {}) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { ...UI_HEADER, "Content-Type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.redirected) { // the session ended: the server sent us to the sign-in page
    window.location.assign(response.url);
    throw new Error("signed out");
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  return { ok: response.ok, status: response.status, data };
}

// --- live rows --------------------------------------------------------------------------------

function setText(root, field, text) {
  root.querySelectorAll(`[data-field="${field}"]`).forEach((el) => { el.textContent = text; });
}

function redraw(root, row) {
  root.querySelectorAll('[data-field="status"]').forEach((el) => {
    el.textContent = row.status.replace("_", " ");
    el.className = `status status-${row.status}`;
  });
  const pct = row.fraction === null ? null : Math.round(row.fraction * 100);
  root.querySelectorAll('[data-field="progress"] progress').forEach((bar) => {
    if (pct === null) bar.removeAttribute("value"); else bar.value = pct;
    bar.hidden = pct === null && row.status !== "running"; // no bar for no progress at all
  });
  setText(root, "percent", pct === null ? "" : `${pct}%`);
  setText(root, "message", row.message || "");
  setText(root, "attempts", `${row.attempts}/${row.max_attempts}`);
  root.dataset.status = row.status;
}

function newRow(table, row) {
  const tr = document.createElement("tr");
  tr.dataset.jobId = row.id;
  const link = document.createElement("a");
  link.href = table.dataset.jobPath + row.id;
  const code = document.createElement("code");
  code.textContent = row.id.slice(0, 8) + "…";
  link.append(code);
  const cells = [["Job", link], ["Kind", row.kind], ["Status", null], ["Progress", null],
    ["Attempts", null], ["Created", row.created_at.replace("T", " ").slice(0, 19)]];
  for (const [label, content] of cells) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (label === "Status") td.innerHTML = '<span class="status" data-field="status"></span>';
    else if (label === "Progress") td.innerHTML = '<div class="progress" data-field="progress"><progress max="100"></progress> <span class="pct" data-field="percent"></span> <span class="message" data-field="message"></span></div>';
    else if (label === "Attempts") td.dataset.field = "attempts";
    else if (content instanceof Node) td.append(content);
    else td.textContent = content;
    tr.append(td);
  }
  tr.querySelector("progress").setAttribute("aria-label", `Progress of ${row.kind}`);
  return tr;
}

// the counts per status are exact when the page loads; then they follow the rows seen moving
function recount(before, after) {
  if (before === after) return;
  for (const [status, delta] of [[before, -1], [after, 1]]) {
    const n = status && document.querySelector(`[data-count="${status}"]`);
    if (n) n.textContent = Math.max(0, Number(n.textContent) + delta);
  }
}

function onRow(row) {
  const table = document.getElementById("jobs");
  let target = document.querySelector(`[data-job-id="${row.id}"]`);
  if (!target && table && table.dataset.prepend === "yes"
      && (!table.dataset.status || table.dataset.status === row.status)
      && (!table.dataset.kind || table.dataset.kind === row.kind)) {
    const empty = table.querySelector("tr.empty");
    if (empty) empty.remove();
    target = newRow(table, row);
    table.tBodies[0].prepend(target);
  }
  if (!target && row.status === "waiting_input" && forMe(row)) {
    document.getElementById("inbox-new").hidden = false;
  }
  if (!target) return;
  if (target.dataset.version && Number(target.dataset.version) > row.version) return;
  target.dataset.version = row.version;
  if (table && table.contains(target)) recount(target.dataset.status, row.status);
  redraw(target, row);
  const job = document.getElementById("job");
  if (job && job === target) redrawJob(job, row);
  const question = target.classList.contains("question") ? target : null;
  if (question && row.status === "waiting_input" && row.question) redrawQuestion(question, row.question);
  if (question && row.status !== "waiting_input") {
    if (!question.dataset.answered) { // not by this page: by someone else, a deadline, a cancel
      setText(question, "outcome", "No longer waiting for an answer:");
    }
    question.querySelector("form.answer").hidden = true;
    question.querySelector(".resumed").hidden = false;
  }
}

// --- the inbox: who a question is for, who holds it, claims ----------------------------------

// whether a waiting job's question (a live row) belongs in this inbox page: for anyone or for
// one of the caller's addressees (principal, roles), and of the filters shown
function forMe(row) {
  const inbox = document.getElementById("inbox");
  if (!inbox || !row.question) return false;
  const assignee = row.question.assignee;
  const mine = JSON.parse(inbox.dataset.addressees);
  return (!assignee || mine.includes(assignee))
    && (!inbox.dataset.kind || inbox.dataset.kind === row.kind)
    && (!inbox.dataset.assignee || inbox.dataset.assignee === assignee);
}

function clock(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// the claim as the card's data has it, while it lasts
function holder(card) {
  const by = card.dataset.claimedBy, until = card.dataset.claimUntil;
  if (!by || !until || Date.parse(until) <= Date.now()) return null;
  return { by, until, mine: by === document.getElementById("inbox").dataset.principal };
}

// who holds the question: the text, the buttons, and the form (disabled while someone else does)
function drawHold(card) {
  const held = holder(card);
  const state = !held ? "free" : held.mine ? "mine" : "theirs";
  if (card.dataset.hold === state && !held) return;
  card.dataset.hold = state;
  setText(card, "holder", !held ? "nobody holds it"
    : `held by ${held.mine ? "you" : held.by} until ${clock(held.until)}`);
  card.querySelectorAll(".question-actions [data-when]").forEach((b) => { b.hidden = b.dataset.when !== state; });
  const fields = card.querySelector("fieldset.answer-fields");
  if (fields) fields.disabled = state === "theirs";
}

// a live change of the question: its assignee, deadline and holder; a new version (escalated,
// asked anew) is announced, and the form keeps the version it was drawn for (an answer to it is
// refused with 412 rather than applied to a question the person has not read)
function redrawQuestion(card, question) {
  card.dataset.assignee = question.assignee || "";
  card.dataset.claimedBy = question.claimed_by || "";
  card.dataset.claimUntil = question.claim_expires_at || "";
  setText(card, "assignee", question.assignee || "anyone");
  const deadline = card.querySelector("[data-deadline]");
  deadline.dataset.deadline = question.deadline || "";
  deadline.closest(".deadline-box").hidden = !question.deadline;
  if (question.deadline) drawDeadline(deadline);
  const form = card.querySelector("form.answer");
  if (Number(form.dataset.version) !== question.version) {
    setText(card, "changed", question.assignee
      ? `This question changed: it is now for ${question.assignee}.`
      : "This question changed since the page showed it.");
    card.querySelector(".changed").hidden = false;
  }
  drawHold(card);
}

const REFUSALS = {
  question_claimed: "Someone else holds this question: take it over to answer it.",
  precondition_failed: "This question changed since you read it (escalated or asked anew).",
};

function showRefusal(box, data, status) {
  box.replaceChildren();
  const text = document.createElement("p");
  const lead = data && REFUSALS[data.code];
  text.textContent = (lead ? `${lead} ` : "") + ((data && data.detail) || "Refused.");
  box.append(text);
  if (status === 409 || status === 412 || status === 404) { // the page is behind: offer a fresh one
    const reload = document.createElement("button");
    reload.type = "button";
    reload.className = "link";
    reload.dataset.reload = "";
    reload.textContent = "Reload";
    reload.addEventListener("click", () => window.location.reload());
    box.append(" ", reload);
  }
  box.hidden = false;
}

function wireQuestions() {
  document.querySelectorAll("article.question").forEach((card) => {
    const box = card.querySelector(".problem");
    const act = async (url, body) => {
      box.hidden = true;
      const { ok, status, data } = await post(url, body);
      if (!ok) { showRefusal(box, data, status); return; }
      card.dataset.claimedBy = data.claimed_by || "";
      card.dataset.claimUntil = data.claim_expires_at || "";
      drawHold(card);
    };
    card.querySelectorAll("[data-claim]").forEach((b) => b.addEventListener("click", () => act(b.dataset.claim)));
    card.querySelectorAll("[data-release]").forEach((b) => b.addEventListener("click", () => act(b.dataset.release)));
    card.querySelectorAll("[data-takeover]").forEach((b) => b.addEventListener("click", () => {
      const held = holder(card);
      const from = held ? held.by : "its holder";
      if (window.confirm(`Take this question over from ${from}? They can no longer answer it.`)) {
        act(b.dataset.takeover, { takeover: true });
      }
    }));
    card.querySelectorAll("[data-reload]").forEach((b) => b.addEventListener("click", () => window.location.reload()));
    drawHold(card);
  });
  if (document.querySelector("article.question")) {
    setInterval(() => document.querySelectorAll("article.question").forEach(drawHold), 1000);
  }
}

// re-read this page and swap in fresh copies of the elements with these ids
async function refreshParts(...ids) {
  const response = await fetch(window.location.href, { credentials: "same-origin" });
  if (!response.ok || response.redirected) return;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const id of ids) {
    const fresh = page.getElementById(id);
    const here = document.getElementById(id);
    if (fresh && here) here.replaceChildren(...fresh.childNodes);
  }
}

function redrawJob(job, row) {
  const terminal = ["succeeded", "failed", "cancelled"].includes(row.status);
  if (terminal && !job.dataset.finished) { // the result, error and facts are the server's to draw
    job.dataset.finished = "yes";
    refreshParts("job-data", "job-facts");
  }
  job.querySelectorAll('[data-when="active"]').forEach((b) => { b.disabled = terminal; });
  job.querySelectorAll('[data-when="pinned"]').forEach((b) => { b.hidden = !row.pinned; });
  job.querySelectorAll('[data-when="unpinned"]').forEach((b) => { b.hidden = row.pinned; });
  job.querySelector('[data-field="pinned"]').hidden = !row.pinned;
  job.querySelector('[data-field="cancel_requested"]').hidden = !row.cancel_requested || terminal;
}

function followLive() {
  const url = document.body.dataset.live;
  if (!url || !document.querySelector("[data-job-id], #jobs, #inbox-new")) return;
  // the stream starts with the current state of the rows shown: nothing since the render is lost
  const ids = [...document.querySelectorAll("[data-job-id]")].map((el) => el.dataset.jobId);
  const source = new EventSource(`${url}?ids=${ids.slice(0, 100).join(",")}`, { withCredentials: true });
  source.addEventListener("job", (e) => onRow(JSON.parse(e.data)));
  source.addEventListener("ready", () => { document.body.dataset.liveReady = "yes"; });
}

function followTimeline() {
  const job = document.getElementById("job");
  const list = document.getElementById("timeline");
  if (!job || !list) return;
  const last = list.querySelector("li:last-child");
  const after = last ? last.dataset.seq : "0";
  const source = new EventSource(`${job.dataset.events}?after=${after}`, { withCredentials: true });
  source.addEventListener("event", (e) => {
    const event = JSON.parse(e.data);
    if (list.querySelector(`[data-seq="${event.seq}"]`)) return;
    const li = document.createElement("li");
    li.dataset.seq = event.seq;
    const time = document.createElement("time");
    time.dateTime = event.at;
    time.textContent = event.at.slice(11, 19);
    const name = document.createElement("span");
    name.className = "event";
    name.textContent = event.type;
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = event.summary || "";
    li.append(time, " ", name, " ", detail);
    list.append(li);
    if (["succeeded", "failed", "cancelled", "expired"].includes(event.type)) source.close();
  });
}

// --- buttons, sign-in, refresh ---------------------------------------------------------------

function wireActions() {
  document.querySelectorAll("button[data-action]").forEach((button) => {
    button.addEventListener("click", async () => {
      const job = document.getElementById("job");
      const error = job.querySelector('[data-field="action-error"]');
      button.disabled = true;
      const { ok, data } = await post(button.dataset.action);
      button.disabled = false;
      error.hidden = ok;
      if (ok) { onRow(data); } else { error.textContent = (data && data.detail) || "refused"; }
    });
  });
  document.querySelectorAll("[data-sign-out]").forEach((button) => {
    button.addEventListener("click", async () => {
      await post(button.dataset.signOut);
      window.location.assign(document.body.dataset.home);
    });
  });
  const signIn = document.getElementById("sign-in");
  if (signIn) {
    signIn.addEventListener("submit", async (e) => {
      e.preventDefault();
      const error = document.getElementById("sign-in-error");
      const key = signIn.elements.key.value.trim();
      if (!key) { error.textContent = "Enter an API key."; error.hidden = false; return; }
      const { ok, data } = await post(signIn.dataset.action, { key });
      if (ok) { window.location.assign(signIn.dataset.next); return; }
      signIn.elements.key.setAttribute("aria-invalid", "true");
      error.textContent = (data && data.detail) || "Sign-in refused.";
      error.hidden = false;
    });
  }
  const health = document.getElementById("health");
  if (health) {
    setInterval(() => refreshParts("health"), Number(health.dataset.refresh) * 1000);
  }
}

// --- deadlines ---------------------------------------------------------------------------------

function remaining(ms) {
  if (ms <= 0) return "deadline passed";
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? `${h} h ` : "") + (h || m ? `${m} min ` : "") + `${r} s left`;
}

function drawDeadline(el) {
  const ms = Date.parse(el.dataset.deadline) - Date.now();
  el.textContent = remaining(ms);
  el.title = `answer by ${el.dataset.deadline}`;
  el.classList.toggle("overdue", ms <= 0);
}

function countDown() {
  const all = document.querySelectorAll("[data-deadline]");
  if (!all.length) return;
  const tick = () => all.forEach(drawDeadline);
  tick();
  setInterval(tick, 1000);
}

// --- answer forms: controls -> JSON ----------------------------------------------------------

class Invalid extends Error {
  constructor(control, message) { super(message); this.control = control; }
}

function valueOf(el) {
  const type = el.dataset.type;
  if (type === "boolean") return el.checked;
  if (type === "array") {
    const picked = [...el.querySelectorAll("input[type=checkbox]:checked")].map((c) => JSON.parse(c.value));
    const min = el.dataset.minItems, max = el.dataset.maxItems;
    if (min !== undefined && picked.length < Number(min)) throw new Invalid(el, `Pick at least ${min}.`);
    if (max !== undefined && picked.length > Number(max)) throw new Invalid(el, `Pick at most ${max}.`);
    return picked.length || el.dataset.required ? picked : undefined;
  }
  const text = el.value;
  if (text === "") return undefined;
  if (type === "json") {
    try { return JSON.parse(text); } catch (e) { throw new Invalid(el, "Not valid JSON."); }
  }
  if (type === "number" || type === "integer") {
    const n = Number(text);
    const lo = el.dataset.exclusiveMin, hi = el.dataset.exclusiveMax;
    if (lo !== undefined && !(n > Number(lo))) throw new Invalid(el, `Must be more than ${lo}.`);
    if (hi !== undefined && !(n < Number(hi))) throw new Invalid(el, `Must be less than ${hi}.`);
    return n;
  }
  if (type === "datetime") return new Date(text).toISOString();
  return text;
}

function assign(target, path, value) {
  let node = target;
  for (const key of path.slice(0, -1)) node = node[key] = node[key] || {};
  node[path[path.length - 1]] = value;
}

function collect(form) {
  let answer = {};
  let whole;
  form.querySelectorAll("[data-path]").forEach((el) => {
    if (el.dataset.type === "object") return; // a group: its children carry the values
    const path = JSON.parse(el.dataset.path);
    const value = valueOf(el);
    if (value === undefined) return;
    if (path.length === 0) whole = { value };
    else assign(answer, path, value);
  });
  if (whole) return whole.value;
  const top = form.querySelector("[data-path]");
  return top && JSON.parse(top.dataset.path).length === 0 ? null : answer;
}

function showProblem(form, data) {
  const box = form.querySelector(".problem");
  box.replaceChildren();
  const title = document.createElement("p");
  const listed = data && Array.isArray(data.errors) && data.errors.length;
  title.textContent = listed ? "The answer was refused:" : (data && data.detail) || "The answer was refused.";
  box.append(title);
  if (data && Array.isArray(data.errors)) {
    const list = document.createElement("ul");
    for (const message of data.errors) {
      const li = document.createElement("li");
      li.textContent = message;
      list.append(li);
      const field = form.querySelector(`[name="answer.${String(message).split(":")[0].replaceAll("/", ".")}"]`);
      if (field) field.setAttribute("aria-invalid", "true");
    }
    box.append(list);
  }
  box.hidden = false;
  box.focus?.();
}

function wireAnswers() {
  document.querySelectorAll("form.answer").forEach((form) => {
    form.addEventListener("input", (e) => { // a changed field is no longer known to be wrong
      e.target.removeAttribute("aria-invalid");
      const group = e.target.closest("fieldset.multi");
      if (group) { group.removeAttribute("aria-invalid"); group.querySelector(".error").hidden = true; }
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const box = form.querySelector(".problem");
      box.hidden = true;
      form.querySelectorAll("fieldset.multi .error").forEach((el) => { el.hidden = true; });
      if (!form.reportValidity()) return; // the browser names the first field that is off
      let answer;
      try {
        answer = collect(form);
      } catch (err) {
        if (!(err instanceof Invalid)) throw err;
        const note = err.control.querySelector?.(".error");
        if (note) { note.textContent = err.message; note.hidden = false; }
        else { err.control.setCustomValidity(err.message); err.control.reportValidity(); err.control.setCustomValidity(""); }
        err.control.setAttribute("aria-invalid", "true");
        return;
      }
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      const { ok, status, data } = await post(form.dataset.action,
        { answer, question_key: form.dataset.key }, { "If-Match": `"${form.dataset.version}"` });
      button.disabled = false;
      if (!ok && data && data.code === "invalid_answer") { showProblem(form, data); return; }
      if (!ok) { showRefusal(form.querySelector(".problem"), data, status); return; }
      const card = form.closest(".question");
      card.dataset.answered = "yes";
      onRow(data);
      form.hidden = true;
      card.querySelector(".resumed").hidden = false;
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wireActions();
  wireAnswers();
  wireQuestions();
  countDown();
  followLive();
  followTimeline();
});
