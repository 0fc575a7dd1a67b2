// The tree: each run with its iterations (the model's reply, each cell's code,
// what the code started, its output), its final answer and its usage; child runs
// drawn inside the cell that started them. Only what changed is redrawn, an
// iteration's body only while it is open, and at most SHOWN_STEP more iterations
// of a run at a time, so a run of thousands of iterations stays light.

import { add, clear, count, el, folded, seconds } from "./dom.js";
import { BAD_NOTES, Iteration, Run } from "./model.js";

const SHOWN_STEP = 100;
const OPEN_AT_FIRST = 40; // iterations drawn open, over the whole page

export class TreeView {
  constructor(container, model, source) {
    this.container = container;
    this.model = model;
    this.source = source;
    this.runViews = new Map();
    this.itViews = new Map();
    this.openLeft = OPEN_AT_FIRST;
  }

  flush() {
    const dirty = [...this.model.dirty];
    this.model.dirty.clear();
    for (const thing of dirty) if (thing instanceof Run) this.drawRun(thing);
    for (const thing of dirty) if (thing instanceof Iteration) this.drawIteration(thing);
    const bad = this.model.unreadable;
    if (bad.length && bad.length !== this.unreadableShown) {
      // Lines that are no event: named at the top, the first few quoted.
      this.unreadableShown = bad.length;
      this.unreadable ??= this.container.insertBefore(el("div", "alert unreadable"), this.container.firstChild);
      clear(this.unreadable);
      add(this.unreadable, el("div", null, `${count(bad.length)} line(s) could not be read`));
      for (const e of bad.slice(0, 5)) add(this.unreadable, el("div", "note", noteText(e)));
    }
  }

  // -- runs -----------------------------------------------------------------------

  runView(run) {
    let view = this.runViews.get(run);
    if (view) return view;
    const section = el("section", `run depth-${Math.min(run.depth, 4)}`);
    section.dataset.runId = run.id;
    section.dataset.depth = String(run.depth);
    view = {
      section,
      header: el("header", "run-header"),
      banner: el("div", "banners"),
      loose: el("div", "items"),
      iterations: el("div", "iterations"),
      more: el("button", "more-iterations"),
      footer: el("div", "run-footer"),
      shown: 0,
      limit: SHOWN_STEP,
    };
    view.more.type = "button";
    view.more.hidden = true;
    view.more.addEventListener("click", () => {
      view.limit += SHOWN_STEP;
      this.drawRun(run);
    });
    add(section, view.header, view.banner, view.loose, view.iterations, view.more, view.footer);
    this.runViews.set(run, view);
    if (!this.model.runs.get(run.parentId) && !run.childStart) this.container.appendChild(section);
    return view;
  }

  drawRun(run) {
    const view = this.runView(run);
    const header = clear(view.header);
    const child = run.childStart !== null;
    add(
      header,
      el("span", "run-kind", child ? `child run · depth ${run.depth}` : run.label),
      el("span", "run-id", run.id),
      el("span", "run-model", run.model),
    );
    const question = run.start?.query ?? run.childStart?.prompt;
    if (question) add(header, el("div", "run-query", question));
    const facts = [];
    if (run.start) {
      facts.push(`backend ${run.start.backend}`, `context: ${run.start.context}`);
      if (run.start.sub_model) facts.push(`sub-model ${run.start.sub_model}`);
      if (run.start.max_depth) facts.push(`max depth ${run.start.max_depth}`);
    } else if (run.childStart?.context) {
      facts.push(`context: ${run.childStart.context}`);
    }
    if (facts.length) add(header, el("div", "run-facts", facts.join(" · ")));

    clear(view.banner);
    const trouble = run.trouble;
    if (trouble) add(view.banner, el("div", "alert run-trouble", trouble));

    clear(view.loose);
    for (const item of run.loose) add(view.loose, this.item(item));

    const wanted = Math.min(run.iterations.length, view.limit);
    while (view.shown < wanted) {
      const it = run.iterations[view.shown];
      view.iterations.appendChild(this.itView(it).details);
      this.drawIteration(it);
      view.shown += 1;
    }
    const hidden = run.iterations.length - view.shown;
    view.more.hidden = hidden <= 0;
    view.more.textContent = `show ${Math.min(hidden, SHOWN_STEP)} more of ${count(hidden)} iterations`;

    const footer = clear(view.footer);
    for (const note of run.notes) add(footer, this.note(note));
    if (run.final) add(footer, this.finalBox(run.final));
    if (run.childEnd) add(footer, this.childEndBox(run.childEnd));
    if (run.usage) add(footer, usageTable(run.usage));
  }

  finalBox(final) {
    const box = el("div", `final ${final.status && final.status !== "answered" ? "bad" : ""}`);
    add(box, el("div", "label", `final answer${final.forced ? " (forced)" : ""}`));
    add(box, this.text("answer", final, "answer"));
    const facts = [`status ${final.status ?? "?"}`];
    if (final.stopped) facts.push(`stopped by ${final.stopped}`);
    const limits = Object.entries(final.limits ?? {});
    if (limits.length) facts.push(`refused: ${limits.map(([k, v]) => `${k} ×${v}`).join(", ")}`);
    return add(box, el("div", "facts", facts.join(" · ")));
  }

  childEndBox(end) {
    const bad = end.status !== "answered";
    const box = el("div", `final child-end ${bad ? "bad" : ""}`);
    add(box, el("div", "label", `child answer · ${end.status} · ${seconds(end.seconds)}`));
    if (end.answer) add(box, this.text("answer", end, "answer"));
    if (end.error) add(box, el("pre", "error", `${end.failure ?? "error"}: ${end.error}`));
    if (end.usage) {
      add(box, el("div", "facts", `${count(end.usage.total_tokens)} tokens · ${count(end.usage.sub_calls)} sub-calls`));
    }
    return box;
  }

  // -- iterations -----------------------------------------------------------------

  itView(it) {
    let view = this.itViews.get(it);
    if (view) return view;
    const details = el("details", "iteration");
    details.dataset.iteration = String(it.n);
    const summary = el("summary");
    const body = el("div", "iteration-body");
    add(details, summary, body);
    view = { details, summary, body, built: false };
    if (this.openLeft > 0) {
      this.openLeft -= 1;
      details.open = true;
    }
    details.addEventListener("toggle", () => {
      if (details.open && !view.built) this.drawBody(it, view);
    });
    this.itViews.set(it, view);
    return view;
  }

  drawIteration(it) {
    const view = this.itViews.get(it);
    if (!view) return; // not shown yet
    const summary = clear(view.summary);
    const reply = it.reply;
    add(summary, el("span", "it-n", `iteration ${it.n}`));
    if (reply) {
      add(summary, el("span", "it-fact", `${reply.model} · ${seconds(reply.seconds)} · ${count((reply.prompt_tokens ?? 0) + (reply.completion_tokens ?? 0))} tokens`));
    }
    const cells = it.cells.length;
    if (cells) add(summary, el("span", "it-fact", `${cells} cell${cells > 1 ? "s" : ""}`));
    const items = it.cells.flatMap((c) => c.items);
    const batches = items.filter((i) => i.kind === "batch").length;
    const children = items.filter((i) => i.kind === "child").length;
    if (batches) add(summary, el("span", "it-fact", `${batches} batch${batches > 1 ? "es" : ""}`));
    if (children) add(summary, el("span", "it-fact", `${children} child run${children > 1 ? "s" : ""}`));
    if (it.failed) add(summary, el("span", "it-bad", "error"));
    view.built = false;
    if (view.details.open) this.drawBody(it, view);
  }

  drawBody(it, view) {
    view.built = true;
    const body = clear(view.body);
    if (it.reply) {
      // The reply's code is the cell's below: a few lines of it say enough.
      add(body, el("div", "label", "model reply"), this.text("reply", it.reply, "text", false, 6));
    }
    for (const cell of it.cells) add(body, this.cell(cell));
    for (const note of it.notes) add(body, this.note(note));
  }

  cell(cell) {
    const box = el("div", `cell ${cell.failed ? "bad" : ""}`);
    const out = cell.output;
    const took = out ? seconds(out.duration_s) : "running…";
    add(box, el("div", "label", `cell · ${took}`));
    add(box, this.text("code", cell.event, "code", true));
    if (cell.items.length) {
      const items = el("div", "items");
      for (const item of cell.items) add(items, this.item(item));
      add(box, items);
    }
    if (out) add(box, this.output(out));
    return box;
  }

  output(out) {
    const box = el("div", "output");
    const empty = !out.stdout && !out.stderr && !out.error;
    if (out.stdout) add(box, this.text("stdout", out, "stdout"));
    if (out.stderr) add(box, this.text("stderr", out, "stderr"));
    if (out.error) add(box, this.text("error", out, "error"));
    const flags = [];
    if (out.timed_out) flags.push("timed out");
    if (out.state_lost) flags.push("sandbox state lost");
    if (out.truncated) flags.push("output truncated by the sandbox");
    if (flags.length) add(box, el("div", "alert", flags.join(" · ")));
    if (empty && !flags.length) add(box, el("div", "quiet", "(no output)"));
    return box;
  }

  item(item) {
    if (item.kind === "batch") return batchLine(item);
    if (item.kind === "child") {
      const box = el("div", "child");
      const start = item.start;
      add(box, el("div", "label", `rlm_query → child run ${item.run.id} (${start.model ?? ""})`));
      const view = this.runView(item.run);
      this.drawRun(item.run);
      return add(box, view.section);
    }
    const start = item.start ?? {};
    const end = item.end;
    const line = el("div", `${item.kind} ${end && (end.failures || end.ok === false) ? "bad" : ""}`);
    if (item.kind === "tool") {
      const name = start.name ?? end?.name;
      const state = !end ? "running…" : end.ok === false ? `failed: ${end.error}` : "ok";
      return add(line, `tool ${name} · ${state}${end ? ` · ${seconds(end.seconds)}` : ""}`);
    }
    const parts = [`${start.method ?? "sub-call"} → ${start.model ?? ""}`, `${count(start.size ?? 1)} prompt(s)`];
    if (end) parts.push(`${end.failures ?? 0} failed`, seconds(end.seconds));
    else parts.push("running…");
    add(line, parts.join(" · "));
    if (start.prompt) add(line, el("pre", "prompt", start.prompt));
    return line;
  }

  note(event) {
    const bad = BAD_NOTES.has(event.event);
    return el("div", `note ${bad ? "alert" : ""}`, noteText(event));
  }

  // A text field of an event, folded when long; a field the server cut is fetched
  // whole when the user asks for it.
  text(cls, event, field, code = false, fold = undefined) {
    const value = String(event[field] ?? "");
    const total = event.cut?.[field] ?? null;
    const full = () => this.source.field(event.seq, field);
    return folded(cls, value, { total, full, code, fold });
  }
}

function batchLine(item) {
  const s = item.start ?? {};
  const e = item.end;
  const failed = e && (e.failures > 0 || e.cancelled);
  const box = el("div", `batch ${failed ? "bad" : ""}`);
  const size = e?.size ?? s.size;
  const parts = [`batch ${s.batch ?? e?.batch ?? ""} · ${count(size)} prompts`];
  if (s.unique !== undefined && s.unique !== size) parts.push(`${count(s.unique)} distinct`);
  if (s.max_concurrent) parts.push(`concurrency ${s.max_concurrent}`);
  parts.push(s.model ?? e?.model ?? "");
  if (e) {
    parts.push(`${count(e.done)} done`, `${count(e.failures)} failed`, `${count(e.retries)} retries`);
    if (e.cache_hits) parts.push(`${count(e.cache_hits)} cached`);
    if (e.dedup_hits) parts.push(`${count(e.dedup_hits)} deduplicated`);
    parts.push(`${count((e.prompt_tokens ?? 0) + (e.completion_tokens ?? 0))} tokens`, seconds(e.seconds));
    if (e.cancelled) parts.push("cancelled");
  } else if (item.progress) {
    const p = item.progress;
    parts.push(`${count(p.done)} of ${count(p.total)} done`, `${count(p.failures)} failed`);
    if (typeof p.eta_s === "number") parts.push(`about ${seconds(p.eta_s)} left`);
  } else {
    parts.push("running…");
  }
  return add(box, el("span", "batch-count", parts[0]), ` · ${parts.slice(1).join(" · ")}`);
}

function noteText(e) {
  switch (e.event) {
    case "root_retry": return `root call retried (attempt ${e.attempt}, ${e.kind}), waiting ${seconds(e.delay)}`;
    case "limit_reached": return `limit reached: ${e.limit} — the run stops`;
    case "concurrency_cut": return `a 429 cut ${e.model}'s concurrency to ${e.concurrency}`;
    case "cache_error": return `the response cache failed: ${e.error}`;
    case "missing_variable": return `FINAL_VAR named a variable the sandbox does not have: ${e.name}`;
    case "invalid_answer": return `the answer did not match the schema: ${e.problem}`;
    case "compaction": return `older turns summarized: ${count(e.tokens_before)} → ${count(e.tokens_after)} tokens`;
    case "no_action": return "the reply had neither code nor a final answer";
    case "sandbox_started": return `sandbox started: ${e.backend}${e.container ? ` (${e.container})` : ""}`;
    case "session_closed": return `session closed: ${e.reason}`;
    case "unreadable": return `line ${e.seq} is unreadable: ${e.error}`;
    default: {
      const rest = { ...e };
      for (const k of ["event", "run_id", "parent_id", "depth", "session", "seq", "t"]) delete rest[k];
      const fields = Object.entries(rest).map(
        ([k, v]) => `${k} ${typeof v === "string" ? v : JSON.stringify(v)}`,
      );
      return `${e.event}: ${fields.join(" · ")}`;
    }
  }
}

function usageTable(usage) {
  const box = el("div", "usage");
  const cost = usage.cost_usd === null || usage.cost_usd === undefined ? "no price table" : `$${Number(usage.cost_usd).toFixed(4)}`;
  add(box, el("div", "label", `usage · ${count(usage.total_tokens)} tokens · ${count(usage.sub_calls)} sub-calls · cost ${cost}`));
  const table = el("table");
  const head = el("tr");
  for (const h of ["depth", "model", "calls", "prompt tokens", "completion tokens", "failures", "retries", "model time", "cost"]) add(head, el("th", null, h));
  add(table, head);
  const levels = usage.by_depth ?? { all: usage.by_model ?? {} };
  for (const [depth, models] of Object.entries(levels)) {
    for (const [name, m] of Object.entries(models ?? {})) {
      const row = el("tr");
      const priced = usage.cost_by_depth?.[depth]?.[name];
      const cost = priced === undefined ? "—" : `$${Number(priced).toFixed(4)}`;
      for (const v of [depth, name, count(m.calls), count(m.prompt_tokens), count(m.completion_tokens), count(m.failures), count(m.retries), seconds(m.seconds), cost]) add(row, el("td", null, v));
      add(table, row);
    }
  }
  return add(box, table);
}
