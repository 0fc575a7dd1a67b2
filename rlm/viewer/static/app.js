// The viewer for one trajectory, whatever feeds it: ``rlm view`` pages through a
// file, ``rlm serve`` streams a run's events. Events are taken in slices with a
// pause between them, so a large trajectory never holds the page for long.

import { add, clear, el } from "./dom.js";
import { Model } from "./model.js";
import { TimelineView } from "./timeline.js";
import { TreeView } from "./tree.js";

const SLICE = 400; // events folded in between two breaths of the page
const TIMELINE_EVERY_MS = 400;

const pause = () => new Promise((resolve) => setTimeout(resolve, 0));

// source: { field(seq, name) -> Promise<string> } for fields sent cut.
export function createViewer(container, source) {
  clear(container);
  const status = el("div", "status");
  const timelineBox = el("div", "timeline");
  const treeBox = el("div", "tree");
  add(
    container,
    status,
    add(el("section", "panel"), el("h2", null, "timeline"), timelineBox),
    add(el("section", "panel"), el("h2", null, "runs"), treeBox),
  );
  const model = new Model();
  const tree = new TreeView(treeBox, model, source);
  const reveal = (it) => {
    const runView = tree.runView(it.run);
    const index = it.run.iterations.indexOf(it);
    if (index >= runView.limit) {
      runView.limit = index + 1;
      tree.drawRun(it.run);
    }
    const view = tree.itView(it);
    view.details.open = true;
    view.details.scrollIntoView({ block: "start" });
  };
  const timeline = new TimelineView(timelineBox, model, reveal);
  let drawn = 0;
  let timer = null;

  let cost = 0; // how long the last drawing took
  const drawTimeline = () => {
    timer = null;
    model.changed = false;
    const started = performance.now();
    timeline.draw();
    drawn = performance.now();
    cost = drawn - started;
  };
  const scheduleTimeline = () => {
    if (!model.changed || timer !== null) return;
    // A big run's timeline costs more to draw: it is drawn less often, so the page
    // spends at most a fifth of its time on it.
    const every = Math.max(TIMELINE_EVERY_MS, 4 * cost);
    const wait = Math.max(0, every - (performance.now() - drawn));
    timer = setTimeout(drawTimeline, wait);
  };
  window.addEventListener("resize", () => {
    model.changed = true;
    scheduleTimeline();
  });

  return {
    model,
    async ingest(events) {
      for (let i = 0; i < events.length; i += SLICE) {
        for (const event of events.slice(i, i + SLICE)) model.add(event);
        tree.flush();
        scheduleTimeline();
        if (i + SLICE < events.length) await pause();
      }
    },
    progress(event) {
      model.progress(event);
      tree.flush();
    },
    status(text, cls = "") {
      status.className = `status ${cls}`;
      status.textContent = text;
    },
    problems() {
      return model.unreadable.length;
    },
  };
}
