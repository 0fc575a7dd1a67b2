"""The viewer's server without a browser: the file's index (offsets, growth,
partial lines, pages bounded in events and bytes, long fields cut and fetched
whole) and its HTTP surface (headers, hosts, files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rlm.errors import ConfigurationError
from rlm.viewer import index as index_module
from rlm.viewer.index import PREVIEW_CHARS, TrajectoryIndex, summarize
from rlm.viewer.server import build_viewer
from tests.viewer.support import event, write_events


def test_the_index_follows_a_growing_file_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    index = TrajectoryIndex(path)
    assert index.refresh() == 0  # not there yet: empty, no error
    write_events(path, [event("run_start", 0.0, query="q"), event("cell", 0.1, code="x")])
    assert index.refresh() == 2
    with path.open("a", encoding="utf-8") as file:
        file.write('{"event": "output", "stdout": "par')  # a writer mid-line
    assert index.refresh() == 2
    assert [e["event"] for e in index.page()] == ["run_start", "cell"]
    with path.open("a", encoding="utf-8") as file:
        file.write('tial"}\n\n')  # finished, then a blank line (no event)
    assert index.refresh() == 3
    (third,) = index.page(after=2)
    assert third == {"event": "output", "stdout": "partial", "seq": 3}
    assert index.page(after=3) == []
    assert index.size == path.stat().st_size


def test_a_replaced_or_truncated_file_is_indexed_again(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    write_events(path, [event("cell", float(i), code=str(i)) for i in range(5)])
    index = TrajectoryIndex(path)
    assert index.refresh() == 5
    write_events(path, [event("cell", 0.0, code="new")], mode="w")
    assert index.refresh() == 1
    assert index.page()[0]["code"] == "new"


def test_pages_are_bounded_in_events_and_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.jsonl"
    write_events(path, [event("output", float(i), stdout="x" * 1000) for i in range(50)])
    index = TrajectoryIndex(path)
    index.refresh()
    assert [e["seq"] for e in index.page(after=10, limit=5)] == [11, 12, 13, 14, 15]
    monkeypatch.setattr(index_module, "PAGE_BYTES", 3500)  # three events' lines
    assert len(index.page()) == 3
    monkeypatch.setattr(index_module, "PAGE_BYTES", 10)  # less than one: still one
    assert len(index.page(after=49)) == 1


def test_long_strings_are_cut_in_summaries_and_read_whole_on_demand(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    long = "line\n" * 10_000
    write_events(path, [event("output", 1.0, stdout=long, stderr="short")])
    write_events(path, [{"not": "an event"}])
    path.open("a").write("{broken json\n")
    index = TrajectoryIndex(path)
    index.refresh()
    first, second, third = index.page()
    assert first["stdout"] == long[:PREVIEW_CHARS] and first["cut"] == {"stdout": len(long)}
    assert first["stderr"] == "short"
    assert second["event"] == third["event"] == "unreadable" and third["seq"] == 3
    assert index.field(1, "stdout") == long
    assert index.field(1, "missing") is None and index.field(9, "stdout") is None
    assert index.field(3, "stdout") is None


def test_the_page_as_json_is_the_page_and_always_valid_for_a_browser(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    write_events(
        path, [event("cell", 0.1, code="é ✓ \u2028"), event("output", 0.2, stdout="x" * 5000)]
    )
    with path.open("a") as file:
        file.write('{"event": "batch_progress", "eta_s": NaN, "done": Infinity}\n')  # Python's
        file.write('{"event": "cell", "seq": 99, "code": "its own seq"}\n')
        file.write("  \ufeff{not json}  \n")
    index = TrajectoryIndex(path)
    index.refresh()
    text = index.page_json().decode("utf-8")
    # Strict JSON (what JSON.parse takes): NaN and infinities are refused here.
    events = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the page"))
    assert events == index.page()
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert events[0]["code"] == "é ✓ \u2028" and events[1]["cut"] == {"stdout": 5000}
    assert events[2]["eta_s"] is None and events[2]["done"] is None
    assert events[3]["code"] == "its own seq"  # the index's number wins
    assert events[4]["event"] == "unreadable"


def test_summaries_keep_events_that_need_no_cut_unchanged() -> None:
    e = event("final", 2.0, answer="42", limits={}, stopped=None)
    assert summarize(e, 7) == {**e, "seq": 7}
    assert summarize(["not", "a dict"], 1)["event"] == "unreadable"


def test_a_hundred_megabytes_are_indexed_in_a_moment(tmp_path: Path) -> None:
    import time

    path = tmp_path / "big.jsonl"
    line = json.dumps(event("output", 1.0, stdout="y" * 99_000)) + "\n"
    with path.open("w") as file:
        for _ in range(1000):
            file.write(line)
    index = TrajectoryIndex(path)
    started = time.monotonic()
    assert index.refresh() == 1000
    page = index.page()
    took = time.monotonic() - started
    assert took < 5, took
    # A page stays small: previews only, and a few megabytes of the file read.
    assert 1 <= len(page) <= 41
    assert len(json.dumps(page)) < 100 * PREVIEW_CHARS


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    path = tmp_path / "run.jsonl"
    write_events(
        path, [event("run_start", 0.0, query="q"), event("output", 1.0, stdout="z" * 5000)]
    )
    return TestClient(build_viewer(path), base_url="http://127.0.0.1:8765")


def test_the_api_pages_events_and_fetches_one_field(client: TestClient) -> None:
    data = client.get("/api/events?after=0").json()
    assert data["file"] == "run.jsonl" and data["total"] == 2
    assert [e["seq"] for e in data["events"]] == [1, 2]
    assert data["events"][1]["cut"] == {"stdout": 5000}
    assert client.get("/api/events?after=1").json()["events"][0]["seq"] == 2
    assert client.get("/api/events/2/stdout").json() == {"value": "z" * 5000}
    assert client.get("/api/events/2/nothing").status_code == 404
    assert client.get("/api/events?after=-1").status_code == 400


def test_every_response_carries_a_strict_content_security_policy(client: TestClient) -> None:
    for url in ("/", "/static/file.js", "/static/viewer.css", "/api/events"):
        reply = client.get(url)
        assert reply.status_code == 200, url
        policy = reply.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert reply.headers["x-content-type-options"] == "nosniff"
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert client.get("/static/file.js").headers["content-type"].startswith("text/javascript")


def test_only_the_viewers_own_files_are_served(client: TestClient) -> None:
    for name in ("../index.py", "..%2Findex.py", ".hidden.js", "index.py", "nothing.js"):
        assert client.get(f"/static/{name}").status_code == 404, name


def test_a_page_from_another_host_name_is_refused(tmp_path: Path) -> None:
    # DNS rebinding: a name that resolves to loopback must not read the file.
    write_events(tmp_path / "t.jsonl", [event("cell", 0.0, code="secret")])
    app = build_viewer(tmp_path / "t.jsonl")
    assert (
        TestClient(app, base_url="http://evil.example:8765").get("/api/events").status_code == 400
    )
    assert TestClient(app, base_url="http://localhost:8765").get("/api/events").status_code == 200


def test_the_page_never_writes_markup_from_data() -> None:
    # The page builds its DOM with createElement and textContent only.
    static = Path(index_module.__file__).parent / "static"
    scripts = {p.name: p.read_text() for p in static.glob("*.js")}
    assert {
        "app.js",
        "dom.js",
        "model.js",
        "tree.js",
        "timeline.js",
        "file.js",
        "service.js",
    } <= set(scripts)
    for name, source in scripts.items():
        for sink in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ):
            assert sink not in source, (name, sink)
    for page in static.glob("*.html"):
        assert (
            "<script>" not in page.read_text() and " on" not in page.read_text().split("<body>")[1]
        )


def test_rlm_view_refuses_a_missing_file_and_a_busy_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlm.cli import main
    from rlm.viewer.server import bind

    assert main(["view", str(tmp_path / "nothing.jsonl"), "--port", "0"]) == 2
    assert "no such trajectory file" in capsys.readouterr().err
    taken = bind(0)
    try:
        with pytest.raises(ConfigurationError, match="choose another --port"):
            bind(taken.getsockname()[1])
    finally:
        taken.close()
