// ``rlm serve``'s viewer: a login form (the bearer token stays in this tab's
// sessionStorage), the tenant's runs, and one run followed live over its
// Server-Sent Events. Every request carries the token as any API client's would;
// the page itself holds no tenant data.

import { add, clear, count, el } from "./dom.js";
import { createViewer } from "./app.js";

const KEY = "rlm.token";
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "interrupted"]);
const LIST_EVERY_MS = 1500;
const app = document.getElementById("app");
const nav = document.getElementById("nav");
let current = null; // AbortController of what the page is showing

class Unauthorized extends Error {}

async function api(path, signal) {
  const reply = await fetch(path, {
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) ?? ""}` },
    cache: "no-store",
    signal,
  });
  if (reply.status === 401) throw new Unauthorized("the token was refused");
  if (!reply.ok) {
    let message = `${reply.status} ${reply.statusText}`;
    try {
      message = (await reply.json()).error?.message ?? message;
    } catch {}
    throw new Error(message);
  }
  return reply;
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

function logout(message) {
  sessionStorage.removeItem(KEY);
  route(message);
}

function drawNav() {
  clear(nav);
  if (!sessionStorage.getItem(KEY)) return;
  const runs = el("button", null, "runs");
  runs.type = "button";
  runs.addEventListener("click", () => (location.hash = ""));
  const out = el("button", "logout", "log out");
  out.type = "button";
  out.addEventListener("click", () => logout());
  add(nav, runs, out);
}

function showLogin(message) {
  clear(app);
  const form = el("form", "panel login");
  const input = el("input");
  input.type = "password";
  input.name = "token";
  input.autocomplete = "off";
  input.placeholder = "your API token";
  const button = el("button", null, "show my runs");
  button.type = "submit";
  add(
    form,
    el("h2", null, "sign in"),
    el("p", null, "Paste the bearer token you call the API with. It is kept in this tab only."),
    input,
    button,
  );
  if (message) add(form, el("p", "alert", message));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    sessionStorage.setItem(KEY, token);
    route();
  });
  add(app, form);
  input.focus();
}

// -- the run list ---------------------------------------------------------------

async function showList(signal) {
  clear(app);
  const panel = add(el("section", "panel"), el("h2", null, "your runs"));
  const table = el("table", "runs-table");
  const note = el("div", "status");
  add(app, add(panel, note, table));
  while (!signal.aborted) {
    const data = await (await api("../v1/runs", signal)).json();
    drawList(table, data.data ?? []);
    note.textContent = `${count(data.data?.length ?? 0)} runs · updated ${new Date().toLocaleTimeString()}`;
    await sleep(LIST_EVERY_MS, signal);
  }
}

function drawList(table, runs) {
  clear(table);
  const head = el("tr");
  for (const h of ["run", "status", "profile", "query", "answer", "tokens", "created"]) add(head, el("th", null, h));
  add(table, head);
  if (!runs.length) add(table, add(el("tr"), add(el("td", "quiet", "no runs yet"))));
  for (const run of runs) {
    const row = el("tr", "run-row");
    row.dataset.runId = run.id;
    const link = el("a", null, run.id);
    link.href = `#run/${encodeURIComponent(run.id)}`;
    const created = run.created_at ? new Date(run.created_at * 1000).toLocaleString() : "";
    add(
      row,
      add(el("td"), link),
      el("td", `st-${run.status}`, run.status),
      el("td", null, run.profile),
      el("td", null, clip(run.query)),
      el("td", null, clip(run.answer ?? run.error ?? "")),
      el("td", null, count(run.total_tokens ?? 0)),
      el("td", null, created),
    );
    row.addEventListener("click", () => (location.hash = link.hash));
    add(table, row);
  }
}

const clip = (text) => (text && text.length > 120 ? `${text.slice(0, 120)}…` : text ?? "");

// -- one run, live --------------------------------------------------------------

async function showRun(id, signal) {
  clear(app);
  const head = el("section", "panel run-meta");
  const body = el("div");
  add(app, head, body);
  const viewer = createViewer(body, {
    field: () => Promise.reject(new Error("the service sends whole events")),
  });
  const meta = async () => {
    const run = await (await api(`../v1/runs/${encodeURIComponent(id)}`, signal)).json();
    clear(head);
    add(
      head,
      el("div", "run-title", `run ${run.id} · profile ${run.profile}`),
      el("div", `run-status st-${run.status}`, run.status),
      el("div", "run-query", run.query),
    );
    if (run.error) add(head, el("div", "alert", run.error));
    return run;
  };
  let run = await meta();
  let after = 0;
  while (!signal.aborted) {
    viewer.status(TERMINAL.has(run.status) ? "reading the run's events…" : "following the run live…", "loading");
    const reply = await api(`../v1/runs/${encodeURIComponent(id)}/events?after=${after}`, signal);
    after = await readEvents(reply, viewer, after);
    run = await meta();
    if (TERMINAL.has(run.status)) {
      viewer.status(`${count(viewer.model.count)} events · the run has ended (${run.status})`);
      document.body.dataset.loaded = "true";
      return;
    }
    await sleep(500, signal); // the stream broke off: go on after the last event seen
  }
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header).
async function readEvents(reply, viewer, after) {
  const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return after;
    buffer += value.replace(/\r\n?/g, "\n");
    const events = [];
    let cut;
    while ((cut = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("id:")) id = line.slice(3).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      // Transient events (streamed tokens, batch progress) have no id: shown, not kept.
      if (id === null) {
        try {
          const live = JSON.parse(data.join("\n"));
          if (live.event === "batch_progress") viewer.progress(live);
        } catch {}
        continue;
      }
      const seq = Number(id);
      if (!(seq > after)) continue;
      after = seq;
      try {
        events.push({ ...JSON.parse(data.join("\n")), seq });
      } catch {
        events.push({ event: "unreadable", seq, error: "not JSON" });
      }
    }
    if (events.length) await viewer.ingest(events);
    viewer.status(`${count(viewer.model.count)} events · following the run live…`, "loading");
  }
}

// -- routing --------------------------------------------------------------------

async function route(message) {
  current?.abort();
  current = new AbortController();
  const { signal } = current;
  delete document.body.dataset.loaded;
  drawNav();
  if (!sessionStorage.getItem(KEY)) {
    showLogin(message);
    return;
  }
  const match = /^#run\/(.+)$/.exec(location.hash);
  try {
    if (match) await showRun(decodeURIComponent(match[1]), signal);
    else await showList(signal);
  } catch (err) {
    if (signal.aborted) return;
    if (err instanceof Unauthorized) logout(err.message);
    else add(app, el("div", "alert", `could not load it: ${err.message}`));
  }
}

window.addEventListener("hashchange", () => route());
route();
