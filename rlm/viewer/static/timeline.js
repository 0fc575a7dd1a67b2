// The timeline: every run on one time axis, a row for its root calls and cells and
// rows below for what those cells started (batches, sub-calls, tools, child runs),
// packed so overlapping work (parallel children, say) sits on separate lanes.
// Bars narrower than a pixel are merged, so a run of any length draws a bounded
// number of elements. A click on a bar opens its iteration in the tree.

import { add, clear, el, seconds } from "./dom.js";

const MAX_ROWS = 120;
const MAX_LANES = 6;

export class TimelineView {
  constructor(container, model, onPick) {
    this.container = container;
    this.model = model;
    this.onPick = onPick;
  }

  draw() {
    const box = clear(this.container);
    const bars = this.model.spans();
    if (!bars.length) {
      add(box, el("div", "quiet", "nothing has happened yet"));
      return;
    }
    let t0 = Infinity;
    let t1 = this.model.tMax;
    for (const b of bars) {
      if (b.t0 < t0) t0 = b.t0;
      if (b.t1 > t1) t1 = b.t1;
    }
    t0 = Math.min(0, t0);
    const span = Math.max(t1 - t0, 1e-3);
    const width = Math.max(200, (box.clientWidth || 800) - 170);
    const pct = (t) => ((t - t0) / span) * 100;
    const pxPer = width / span;

    const byRun = new Map();
    for (const b of bars) {
      if (!byRun.has(b.run)) byRun.set(b.run, []);
      byRun.get(b.run).push(b);
    }
    const order = [];
    const visit = (run) => {
      order.push(run);
      for (const c of run.children) visit(c);
    };
    for (const root of this.model.roots) visit(root);

    add(box, legend(), axis(t0, span));
    let rows = 0;
    for (const run of order) {
      const mine = byRun.get(run);
      if (!mine) continue;
      const main = mine.filter((b) => b.lane !== "work");
      const work = mine.filter((b) => b.lane === "work").sort((a, b) => a.t0 - b.t0);
      const lanes = [];
      for (const b of work) {
        let lane = lanes.findIndex((end) => end <= b.t0 + 1e-9);
        if (lane === -1) lane = lanes.length < MAX_LANES ? lanes.length : MAX_LANES - 1;
        lanes[lane] = Math.max(lanes[lane] ?? 0, b.t1);
        b.laneNo = lane;
      }
      const label = `${"  ".repeat(run.depth)}${run.depth ? "child" : run.label} ${run.id}`;
      add(box, this.row(label, main, pct, pxPer, `tl-row depth-${Math.min(run.depth, 4)}`));
      for (let lane = 0; lane < lanes.length; lane++) {
        add(box, this.row("", work.filter((b) => b.laneNo === lane), pct, pxPer, "tl-row work"));
      }
      if (++rows >= MAX_ROWS) {
        add(box, el("div", "quiet", `… ${order.length - rows} more runs not drawn`));
        break;
      }
    }
  }

  row(label, bars, pct, pxPer, cls) {
    const row = el("div", cls);
    const track = el("div", "tl-track");
    add(row, el("div", "tl-label", label), track);
    const byKind = new Map();
    for (const b of bars) {
      if (!byKind.has(b.kind)) byKind.set(b.kind, []);
      byKind.get(b.kind).push(b);
    }
    // Failures last, so they are drawn on top.
    const kinds = [...byKind.keys()].sort((a, b) => a.includes("failed") - b.includes("failed"));
    for (const kind of kinds) {
      const mine = byKind.get(kind).sort((a, b) => a.t0 - b.t0);
      let last = null;
      for (const b of mine) {
        // Merged into the previous bar of its kind when they touch on screen: at most
        // a bar or so per pixel, however many there are.
        if (last && (b.t0 - last.t1) * pxPer < 2) {
          last.t1 = Math.max(last.t1, b.t1);
          last.merged += 1;
          continue;
        }
        if (last) track.appendChild(this.bar(last, pct));
        last = { ...b, merged: 1 };
      }
      if (last) track.appendChild(this.bar(last, pct));
    }
    return row;
  }

  bar(b, pct) {
    const kinds = b.kind.split(" ").map((k) => `tl-${k}`).join(" ");
    const node = el("div", `tl-bar ${kinds}`);
    const left = pct(b.t0);
    node.style.left = `${left}%`;
    node.style.width = `max(2px, ${Math.max(0, pct(b.t1) - left)}%)`;
    node.title = b.merged > 1
      ? `${b.merged} × ${b.kind} (${seconds(b.t1 - b.t0)})`
      : `${b.label} · ${seconds(b.t1 - b.t0)} (at ${seconds(b.t0)})`;
    if (b.target) node.addEventListener("click", () => this.onPick(b.target));
    return node;
  }
}

function legend() {
  const row = el("div", "tl-legend");
  for (const [kind, text] of [["call", "root call"], ["cell", "cell"], ["batch", "sub-calls"], ["child", "child run"], ["failed", "failed"]]) {
    add(row, el("span", `tl-key tl-${kind}`), text);
  }
  return row;
}

function axis(t0, span) {
  const row = el("div", "tl-row tl-axis");
  const track = el("div", "tl-track");
  add(row, el("div", "tl-label", "time"), track);
  for (let i = 0; i <= 4; i++) {
    const tick = el("span", "tl-tick", seconds(t0 + (span * i) / 4) || "0 ms");
    tick.style.left = `${i * 25}%`;
    track.appendChild(tick);
  }
  return row;
}
