// The run viewer's page: plain JavaScript, no build step. Everything it shows comes from the
// server's JSON (already redacted there) and is put in the page as text, never as markup;
// the one exception is the graph, an SVG the server draws and escapes.
"use strict";

const POLL_LIVE = 2000; // ms between refreshes of a list or a live run
const POLL_IDLE = 10000; // ms between refreshes of a finished run (it may be resumed)
const LIVE = new Set(["running", "waiting"]);

let generation = 0; // bumped on every navigation: a refresh of the previous view stops
let timer = null;
let info = { actions: false };
let lastRun = ""; // the JSON of the run shown, to redraw only when it changed
const records = new Map(); // "run/seq" -> a step's full record, fetched once
const drafts = new Map(); // "run/node" -> the answer being typed (kept when the page redraws)

// --- small helpers -------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const error = (body && body.error) || { message: `${response.status} ${response.statusText}` };
    const err = new Error(error.message);
    err.hint = error.hint;
    err.status = response.status;
    throw err;
  }
  return body;
}

function showError(err) {
  const box = $("error");
  box.replaceChildren(el("strong", {}, err.message));
  if (err.hint) box.append(el("span", { class: "hint" }, ` ${err.hint}`));
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function notice(text) {
  const box = $("notice");
  box.textContent = text;
  box.hidden = !text;
}

function number(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

function cost(usd) {
  if (usd === null || usd === undefined) return "–";
  return `$${Number(usd).toFixed(usd >= 1 ? 2 : 4)}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)}s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${Math.round(seconds - m * 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

function clock(at) {
  if (!at) return "–";
  const d = new Date(at * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function badge(status) {
  return el("span", { class: `badge status-${status}`, "data-status": status }, status);
}

function text(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

// A shell word: as it is when it is plain, else in single quotes.
function shellQuote(word) {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'"'"'`)}'`;
}

function command(line) {
  return el("code", { class: "command" }, line);
}

// --- navigation ----------------------------------------------------------------------------

function route() {
  generation += 1;
  clearTimeout(timer);
  clearError();
  notice("");
  const hash = location.hash || "#/";
  const match = hash.match(/^#\/run\/(.+)$/);
  $("runs-view").hidden = Boolean(match);
  $("run-view").hidden = !match;
  if (match) {
    lastRun = "";
    loadRun(decodeURIComponent(match[1]), generation);
  } else {
    loadRuns(generation);
  }
}

function again(fn, gen, delay) {
  if (gen !== generation) return;
  clearTimeout(timer);
  timer = setTimeout(() => {
    if (gen !== generation) return;
    if (document.hidden) again(fn, gen, delay); // a hidden tab does not poll the store
    else fn(gen);
  }, delay);
}

// --- the runs ------------------------------------------------------------------------------

async function loadRuns(gen) {
  const params = new URLSearchParams();
  const status = $("status-filter").value;
  const name = $("name-filter").value.trim();
  if (status) params.set("status", status);
  if (name) params.set("name", name);
  try {
    const data = await api(`/api/runs?${params}`);
    if (gen !== generation) return;
    clearError();
    drawRuns(data);
  } catch (err) {
    if (gen === generation) showError(err);
  }
  again(loadRuns, gen, POLL_LIVE);
}

function drawRuns(data) {
  const rows = data.runs.map((run) =>
    el("tr", { "data-run-id": run.run_id, "data-status": run.status },
      el("td", {}, el("a", { href: `#/run/${encodeURIComponent(run.run_id)}` }, run.run_id),
        run.forked_from ? el("span", { class: "muted" }, ` ⑂ ${run.forked_from}`) : null),
      el("td", {}, run.workflow, run.version == null ? null
        : el("span", { class: "muted version", title: "workflow version" }, ` v${run.version}`)),
      el("td", {}, badge(run.status)),
      el("td", { class: "num" }, number(run.steps)),
      el("td", { class: "num" }, number(run.tokens)),
      el("td", { class: "num" }, cost(run.usd)),
      el("td", { class: "num" }, duration(run.duration)),
      el("td", {}, clock(run.created_at))));
  $("runs").tBodies[0].replaceChildren(...rows);
  $("empty").hidden = rows.length > 0;
  const more = data.total > data.runs.length ? ` (the ${data.runs.length} newest shown)` : "";
  $("count").textContent = `${data.total} run${data.total === 1 ? "" : "s"}${more}`;
}

// --- one run -------------------------------------------------------------------------------

async function loadRun(runId, gen) {
  let data = null;
  try {
    data = await api(`/api/runs/${encodeURIComponent(runId)}`);
    if (gen !== generation) return;
    clearError();
    const seen = JSON.stringify({ ...data, run: { ...data.run, duration: null } });
    if (seen !== lastRun) {
      lastRun = seen;
      drawRun(data);
    } else {
      $("run-duration").textContent = duration(data.run.duration);
    }
  } catch (err) {
    if (gen !== generation) return;
    showError(err);
    if (err.status === 404 || err.status === 400) {
      $("run-title").textContent = runId;
      return; // nothing to refresh
    }
  }
  again((g) => loadRun(runId, g), gen, data && !LIVE.has(data.run.status) ? POLL_IDLE : POLL_LIVE);
}

function drawRun(data) {
  const run = data.run;
  $("run-title").replaceChildren(run.run_id, " ", badge(run.status));
  const facts = [
    ["workflow", run.workflow], ["version", run.version == null ? "–" : run.version],
    ["steps", number(run.steps)], ["tokens", number(run.tokens)],
    ["cost", cost(run.usd)], ["duration", duration(run.duration)], ["created", clock(run.created_at)],
    ["finished", clock(run.finished_at)], ["host", run.host || "–"], ["input", run.input],
  ];
  if (run.result !== null) facts.push(["result", run.result]);
  $("run-summary").replaceChildren(...facts.map(([k, v]) => el("div", { class: `fact fact-${k}` },
    el("dt", {}, k), el("dd", k === "duration" ? { id: "run-duration" } : {}, v))));
  drawLinks(data.links || {});
  const error = $("run-error");
  error.hidden = !run.error;
  error.replaceChildren(el("strong", {}, "error: "), run.error || "");
  drawLineage(data.forked_from);
  drawWaiting(data);
  drawActions(data);
  $("graph").innerHTML = data.graph.svg; // drawn and escaped by the server
  const note = $("graph-note");
  note.hidden = data.graph.recorded;
  note.textContent = "This run was recorded without its graph: only the nodes its steps name are drawn.";
  drawHistory(data);
}

function drawLinks(links) {
  const found = [];
  if (links.actor) found.push(el("a", { href: links.actor, target: "_blank", rel: "noopener" }, "host actor"));
  if (links.jobs) found.push(el("a", { href: links.jobs, target: "_blank", rel: "noopener" }, "Ray jobs"));
  if (links.dashboard) found.push(el("a", { href: links.dashboard, target: "_blank", rel: "noopener" }, "Ray dashboard"));
  $("dashboard").replaceChildren(...found.flatMap((a, i) => (i ? [" · ", a] : [a])));
}

function drawLineage(lineage) {
  const box = $("lineage");
  box.hidden = !lineage || lineage.length === 0;
  if (box.hidden) return;
  box.replaceChildren(el("h2", {}, "Forked from"), el("ul", {}, lineage.map((fork) => {
    const changed = [];
    if (fork.state && Object.keys(fork.state).length) changed.push(`state ${text(fork.state)}`);
    if (fork.node) changed.push(`${fork.node}'s input ${text(fork.input)}`);
    return el("li", {},
      el("a", { href: `#/run/${encodeURIComponent(fork.parent)}` }, fork.parent),
      ` at step ${fork.at_step}`, changed.length ? ` with ${changed.join("; ")}` : "");
  })));
}

function drawWaiting(data) {
  const box = $("waiting");
  const nodes = Object.keys(data.waiting || {});
  box.hidden = nodes.length === 0;
  if (box.hidden) return;
  box.replaceChildren(el("h2", {}, "Waiting for an answer"), ...nodes.map((node) => {
    const form = el("div", { class: "respond", "data-node": node },
      el("h3", {}, node), el("pre", { class: "payload" }, text(data.waiting[node])));
    const line = data.commands.respond[node];
    if (data.actions) {
      const key = `${data.run.run_id}/${node}`;
      const value = el("textarea", { rows: 2, placeholder: "the answer (text, or JSON)" });
      value.value = drafts.get(key) || "";
      value.addEventListener("input", () => drafts.set(key, value.value));
      const asJson = el("input", { type: "checkbox" });
      const by = el("input", { type: "text", placeholder: "your name (optional)" });
      const send = () => act(data.run.run_id, "respond",
        { node, value: value.value, json: asJson.checked, by: by.value || null },
        `Answer ${node} of ${data.run.run_id}?`,
        // The CLI reads a JSON answer from a file: VALUE as text would be a string.
        line.replace("VALUE", asJson.checked ? "@answer.json" : shellQuote(value.value)));
      form.append(value, el("label", {}, asJson, " as JSON"), by,
        el("button", { type: "button", onclick: send }, "Respond"));
    }
    form.append(el("p", { class: "muted" }, "From a shell: "), command(line));
    return form;
  }));
}

function drawActions(data) {
  const box = $("actions");
  const run = data.run;
  const lines = data.commands;
  const buttons = [];
  if (data.actions && lines.cancel) {
    buttons.push(el("button", { type: "button", class: "danger", onclick: () =>
      act(run.run_id, "cancel", {}, `Cancel run ${run.run_id}?`, lines.cancel) }, "Cancel"));
  }
  // A run that says running may be driven (nothing to resume) or cut off by a crash, which
  // only its workflow's code can continue: offered then, with the viewer's --target.
  if (data.actions && lines.resume && (run.status !== "running" || data.target)) {
    buttons.push(el("button", { type: "button", onclick: () =>
      act(run.run_id, "resume", {}, `Resume run ${run.run_id}?`, lines.resume) }, "Resume"));
  }
  const shown = ["status", "history", "cancel", "resume"].filter((k) => lines[k]);
  const intro = data.actions
    ? "The same from a shell:"
    : "Actions run from a shell (start the viewer with --address to run them here):";
  box.replaceChildren(...[
    el("h2", {}, "Actions"),
    buttons.length ? el("div", { class: "buttons" }, buttons) : null,
    el("p", { class: "muted" }, intro),
    el("ul", { class: "commands" }, shown.map((k) => el("li", {}, command(lines[k])))),
    el("p", { class: "muted" }, "Fork from a step: open the step below."),
  ].filter(Boolean));
}

async function act(runId, action, body, question, line) {
  if (!window.confirm(`${question}\n\nThe same from a shell:\n${line}`)) return;
  try {
    const done = await api(`/api/runs/${encodeURIComponent(runId)}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    clearError();
    notice(done.message || "done");
    if (done.run_id && done.run_id !== runId) location.hash = `#/run/${encodeURIComponent(done.run_id)}`;
    else { lastRun = ""; route(); notice(done.message || "done"); }
  } catch (err) {
    showError(err);
  }
}

// --- the steps -----------------------------------------------------------------------------

function drawHistory(data) {
  const open = new Set([...document.querySelectorAll("#history details[open]")].map((d) => d.dataset.seq));
  const steps = data.steps.map((step) => drawStep(data, step, open.has(String(step.seq))));
  if (steps.length === 0) steps.push(el("p", { class: "muted" }, "No committed step yet."));
  $("history").replaceChildren(...steps);
}

function drawStep(data, step, isOpen) {
  const runId = data.run.run_id;
  const facts = [duration(step.duration), `${number(step.tokens)} tokens`, cost(step.usd)];
  if (step.attempts > 1) facts.push(`${step.attempts} attempts`);
  const rows = [["in", step.input], ["out", step.output]];
  for (const [key, value] of Object.entries(step.state || {})) rows.push([`state ${key}`, value === null ? "(deleted)" : value]);
  if (step.next) rows.push(["next", step.next]);
  const effects = Object.entries(step.effects || {}).map(([kind, n]) => `${n} ${kind}`);
  if (effects.length) rows.push(["journaled", effects.join(", ")]);
  for (const a of step.answers || []) {
    rows.push(["asked", text(a.question)]);
    rows.push([`answered${a.by ? ` by ${a.by}` : ""}`, `${text(a.answer)} (${clock(a.at)})`]);
  }
  if (step.run_id !== runId) rows.push(["committed by", step.run_id]);
  const record = el("pre", { class: "record" }, "…");
  const details = el("details", { class: "step", "data-seq": step.seq, "data-node": step.node, open: isOpen },
    el("summary", {},
      el("span", { class: "seq" }, `#${step.seq}`), " ", el("strong", {}, step.node),
      ` (visit ${step.visit}) `, el("span", { class: "muted" }, facts.join(" · ")), " ",
      el("span", { class: "muted" }, clock(step.finished_at))),
    el("table", { class: "fields" }, rows.filter(([, v]) => v !== null && v !== undefined).map(([k, v]) =>
      el("tr", {}, el("th", {}, k), el("td", {}, text(v))))),
    forkControl(data, step),
    el("h4", {}, "Full record"), record);
  details.addEventListener("toggle", () => { if (details.open) fillRecord(runId, step.seq, record); });
  if (isOpen) fillRecord(runId, step.seq, record);
  return details;
}

function forkControl(data, step) {
  const line = data.commands.fork.replace("K", String(step.seq + 1));
  const parts = [el("span", { class: "muted" }, `Fork after this step: `), command(line)];
  if (data.actions && data.target) {
    parts.unshift(el("button", { type: "button", onclick: () =>
      act(data.run.run_id, "fork", { at_step: step.seq + 1 },
        `Fork ${data.run.run_id} after step #${step.seq} (a new run)?`, line) }, "Fork here"), " ");
  }
  return el("p", { class: "fork" }, parts);
}

async function fillRecord(runId, seq, box) {
  const key = `${runId}/${seq}`;
  try {
    if (!records.has(key)) {
      records.set(key, await api(`/api/runs/${encodeURIComponent(runId)}/steps/${seq}`));
    }
    box.textContent = JSON.stringify(records.get(key).record, null, 2);
  } catch (err) {
    box.textContent = `could not read the step: ${err.message}`;
  }
}

// --- start ---------------------------------------------------------------------------------

async function start() {
  $("status-filter").addEventListener("change", () => route());
  $("name-filter").addEventListener("input", () => route());
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); route(); });
  window.addEventListener("hashchange", route);
  try {
    info = await api("/api/info");
    $("store").textContent = info.store;
    $("mode").textContent = info.actions ? `connected to Ray (${info.address})` : "read-only: not connected to Ray";
  } catch (err) {
    showError(err);
  }
  route();
}

document.addEventListener("DOMContentLoaded", start);
