// A run's events folded into a tree: runs (the root and its children), their
// iterations, each iteration's cells, and in each cell what its code started
// (batches of sub-calls, single sub-calls, tool calls, child runs). Events come in
// file order; every event names its run (run_id), so interleaved children are fine.
// What changed is collected in `dirty` for the view to redraw.

export const BAD_NOTES = new Set(["limit_reached", "missing_variable", "invalid_answer", "cache_error"]);

export class Run {
  constructor(id, parentId, depth) {
    this.id = id;
    this.parentId = parentId;
    this.depth = depth;
    this.start = null; // run_start
    this.childStart = null; // the parent's child_start, for a child
    this.childEnd = null;
    this.iterations = [];
    this.byNumber = new Map(); // iteration number -> Iteration
    this.notes = [];
    this.final = null;
    this.usage = null;
    this.loose = []; // items started outside any cell
    this.children = [];
    this.limit = null; // limit_reached
    this.t0 = null;
  }

  get model() {
    return this.start?.model ?? this.childStart?.model ?? this.iterations[0]?.reply?.model ?? "";
  }

  // "run", or "turn N" for the turns of a session after its first (one run_id).
  get label() {
    const turn = this.start?.turn;
    return typeof turn === "number" && turn > 1 ? `turn ${turn}` : "run";
  }

  get lastCell() {
    for (let i = this.iterations.length - 1; i >= 0; i--) {
      const cells = this.iterations[i].cells;
      if (cells.length) return cells[cells.length - 1];
    }
    return null;
  }

  // Why the run ended badly, if it did: a short text, or null.
  get trouble() {
    const end = this.childEnd;
    if (end && end.status && end.status !== "answered") {
      return `ended ${end.status}${end.stopped ? ` (${end.stopped})` : ""}` +
        `${end.error ? `: ${end.error}` : ""}`;
    }
    const final = this.final;
    if (final && ((final.status && final.status !== "answered") || final.stopped)) {
      return `ended ${final.status}${final.stopped ? ` (${final.stopped})` : ""}`;
    }
    if (this.limit) return `stopped by a limit: ${this.limit.limit}`;
    return null;
  }
}

export class Iteration {
  constructor(run, n) {
    this.run = run;
    this.n = n;
    this.reply = null; // root_call
    this.cells = [];
    this.notes = [];
  }

  get failed() {
    return this.cells.some((c) => c.failed) || this.notes.some((n) => BAD_NOTES.has(n.event));
  }
}

export class Cell {
  constructor(iteration, event) {
    this.iteration = iteration;
    this.event = event;
    this.output = null;
    this.items = []; // {kind: "batch"|"subcall"|"tool"|"child", start, end, run?}
  }

  get failed() {
    const out = this.output;
    return Boolean(out && (out.error || out.timed_out || out.state_lost));
  }
}

export class Model {
  constructor() {
    this.runs = new Map(); // run_id -> its latest run (a session's turns share one id)
    this.all = []; // every run, in the order they started
    this.roots = [];
    this.count = 0;
    this.tMax = 0;
    this.unreadable = [];
    this.dirty = new Set(); // Run and Iteration objects to redraw
    this.changed = false; // anything at all (the timeline redraws)
    this.opened = new Map(); // pending (run_id + kind + key) -> item, to pair with its end
  }

  run(event) {
    const id = event.run_id ?? event.session ?? "run";
    let run = this.runs.get(id);
    if (!run || (event.event === "run_start" && run.final)) {
      // A new run, or a new turn of a session under the same id.
      run = new Run(id, event.parent_id ?? null, event.depth ?? 0);
      this.runs.set(id, run);
      this.all.push(run);
      const parent = run.parentId === null ? null : this.runs.get(run.parentId);
      if (parent) parent.children.push(run);
      else this.roots.push(run);
    }
    return run;
  }

  iteration(run, n) {
    const number = typeof n === "number" ? n : Math.max(1, run.iterations.length);
    let it = run.byNumber.get(number);
    if (!it) {
      it = new Iteration(run, number);
      run.iterations.push(it);
      run.byNumber.set(number, it);
      this.dirty.add(run);
    }
    this.dirty.add(it);
    return it;
  }

  place(run, item) {
    const cell = run.lastCell;
    if (cell) {
      cell.items.push(item);
      this.dirty.add(cell.iteration);
    } else {
      run.loose.push(item);
      this.dirty.add(run);
    }
    return item;
  }

  add(event) {
    this.count += 1;
    this.changed = true;
    if (typeof event.t === "number" && event.t > this.tMax) this.tMax = event.t;
    const kind = event.event;
    if (kind === "unreadable" || typeof kind !== "string") {
      this.unreadable.push(event);
      return;
    }
    const run = this.run(event);
    if (run.t0 === null && typeof event.t === "number") {
      run.t0 = kind === "root_call" ? event.t - (event.seconds || 0) : event.t;
    }
    this.dirty.add(run);
    const key = (k) => `${run.id}/${k}`;
    switch (kind) {
      case "run_start":
        run.start = event;
        break;
      case "root_call":
        this.iteration(run, event.iteration).reply = event;
        break;
      case "cell": {
        const it = this.iteration(run, event.iteration);
        it.cells.push(new Cell(it, event));
        break;
      }
      case "output": {
        const it = this.iteration(run, event.iteration);
        const cell = it.cells.find((c) => !c.output) ?? it.cells[it.cells.length - 1];
        if (cell) cell.output = event;
        break;
      }
      case "batch_start":
        this.opened.set(key(`batch/${event.batch}`), this.place(run, { kind: "batch", start: event, end: null }));
        break;
      case "batch_end": {
        const item = this.opened.get(key(`batch/${event.batch}`));
        if (item) item.end = event;
        else this.place(run, { kind: "batch", start: null, end: event });
        this.touch(run);
        break;
      }
      case "subcall_start":
        if (event.method !== "llm_batch") {
          this.opened.set(key(`sub/${event.method}`), this.place(run, { kind: "subcall", start: event, end: null }));
        }
        break;
      case "subcall_end": {
        const item = this.opened.get(key(`sub/${event.method}`));
        if (item && !item.end) item.end = event;
        this.touch(run);
        break;
      }
      case "tool_call":
        this.opened.set(key(`tool/${event.name}`), this.place(run, { kind: "tool", start: event, end: null }));
        break;
      case "tool_end": {
        const item = this.opened.get(key(`tool/${event.name}`));
        if (item && !item.end) item.end = event;
        else this.place(run, { kind: "tool", start: null, end: event });
        this.touch(run);
        break;
      }
      case "child_start": {
        const child = new Run(event.child_id, run.id, (event.depth ?? 0) + 1);
        child.childStart = event;
        child.t0 = event.t ?? null;
        this.runs.set(child.id, child);
        this.all.push(child);
        run.children.push(child);
        this.place(run, { kind: "child", start: event, end: null, run: child });
        this.dirty.add(child);
        break;
      }
      case "child_end": {
        const child = this.runs.get(event.child_id);
        if (child) {
          child.childEnd = event;
          this.dirty.add(child);
        }
        this.touch(run);
        break;
      }
      case "final":
        run.final = event;
        break;
      case "usage":
        run.usage = event;
        break;
      case "limit_reached":
        run.limit = event;
        this.note(run, event);
        break;
      default:
        this.note(run, event);
    }
  }

  // Everything else is a note: on the current iteration, or on the run.
  note(run, event) {
    const it = run.iterations[run.iterations.length - 1];
    if (it && event.event !== "sandbox_started" && event.event !== "session_closed") {
      it.notes.push(event);
      this.dirty.add(it);
    } else {
      run.notes.push(event);
    }
  }

  // A running batch's progress (a transient event: live streams only).
  progress(event) {
    const run = this.runs.get(event.run_id);
    const item = run && this.opened.get(`${run.id}/batch/${event.batch}`);
    if (!item || item.end) return;
    item.progress = event;
    this.touch(run);
  }

  // An item's end changed: redraw the iteration of the cell holding it.
  touch(run) {
    const cell = run.lastCell;
    if (cell) this.dirty.add(cell.iteration);
  }

  // Where time went: bars for the timeline, [{run, kind, t0, t1, label, target}].
  spans() {
    const bars = [];
    const now = this.tMax;
    for (const run of this.all) {
      for (const it of run.iterations) {
        const r = it.reply;
        if (r && typeof r.t === "number") {
          bars.push({ run, kind: "call", t0: r.t - (r.seconds || 0), t1: r.t, label: `root call ${it.n}: ${r.model ?? ""}`, target: it });
        }
        for (const cell of it.cells) {
          const t0 = cell.event.t;
          const t1 = cell.output?.t ?? now;
          bars.push({ run, kind: cell.failed ? "cell failed" : "cell", t0, t1, label: `cell ${it.n}`, target: it });
          for (const item of cell.items) this.itemSpan(bars, run, item, it, now);
        }
      }
      for (const item of run.loose) this.itemSpan(bars, run, item, null, now);
    }
    return bars.filter((b) => typeof b.t0 === "number" && typeof b.t1 === "number");
  }

  itemSpan(bars, run, item, it, now) {
    const done = item.kind === "child" ? item.run.childEnd : item.end;
    const start = item.start?.t ?? (done ? done.t - (done.seconds || 0) : null);
    const end = done?.t ?? now;
    let label = item.kind;
    let kind = item.kind;
    if (item.kind === "batch") {
      const e = item.end ?? item.start;
      label = `batch of ${e.size} (${e.model}) ${item.end ? `${item.end.failures} failed` : "running"}`;
      if (item.end?.failures) kind = "batch failed";
    } else if (item.kind === "child") {
      label = `child ${item.run.id}: ${item.start.prompt ?? ""}`;
      if (item.run.trouble) kind = "child failed";
    } else if (item.kind === "subcall") {
      label = `${item.start?.method ?? "sub-call"} (${item.start?.model ?? ""})`;
    } else if (item.kind === "tool") {
      label = `tool ${(item.start ?? item.end).name}`;
    }
    bars.push({ run, kind, t0: start, t1: end, label, target: it, lane: "work" });
  }
}
