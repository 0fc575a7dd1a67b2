// ``rlm view FILE``: page through the file's events, then keep asking for the
// ones it gains (a run in progress).

import { bytes, count } from "./dom.js";
import { createViewer } from "./app.js";

const POLL_MS = 700;

async function getJSON(url) {
  const reply = await fetch(url, { cache: "no-store" });
  if (!reply.ok) throw new Error(`${reply.status} ${reply.statusText}`);
  return reply.json();
}

const source = {
  async field(seq, name) {
    const data = await getJSON(`api/events/${seq}/${encodeURIComponent(name)}`);
    return data.value;
  },
};

async function follow() {
  const viewer = createViewer(document.getElementById("app"), source);
  let after = 0;
  let failures = 0;
  let next = null; // the next page, asked for while this one is drawn
  for (;;) {
    let data;
    try {
      data = await (next ?? getJSON(`api/events?after=${after}`));
      failures = 0;
    } catch (err) {
      next = null;
      failures += 1;
      viewer.status(`cannot reach rlm view (${err.message}); retrying`, "bad");
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, POLL_MS * failures)));
      continue;
    }
    document.title = `${data.file} · rlm view`;
    if (data.total < after) {
      // The file was replaced or truncated: start over.
      location.reload();
      return;
    }
    next = null;
    if (data.events.length) {
      const last = data.events[data.events.length - 1].seq;
      if (last < data.total) {
        next = getJSON(`api/events?after=${last}`);
        next.catch(() => {}); // handled when awaited
      }
      await viewer.ingest(data.events);
      after = last;
    }
    const loading = after < data.total;
    viewer.status(
      `${data.file} · ${count(after)} of ${count(data.total)} events · ${bytes(data.bytes)}` +
        (loading ? " · loading…" : " · following the file"),
      loading ? "loading" : "",
    );
    if (!loading) {
      document.body.dataset.loaded = "true";
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }
}

follow();
