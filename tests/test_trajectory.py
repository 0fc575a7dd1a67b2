"""Trajectory: every event to the callback; the lasting ones kept and written as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

from rlm.events import EVENT_NAMES, TRANSIENT_EVENTS, EventName
from rlm.trajectory import Trajectory


def test_events_go_to_the_callback_and_the_file_with_their_time(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    path = tmp_path / "run.jsonl"
    trajectory = Trajectory(path, on_event=seen.append)
    trajectory.add("cell", iteration=1, code="print(1)")
    trajectory.emit({"event": "batch_start", "session": "s1", "batch": 1})
    trajectory.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["event"] for e in lines] == ["cell", "batch_start"]
    assert lines[0]["code"] == "print(1)" and lines[1]["session"] == "s1"
    assert all(isinstance(e["t"], float) and e["t"] >= 0 for e in lines)
    assert seen == lines == trajectory.events


def test_transient_events_reach_callbacks_only(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    path = tmp_path / "run.jsonl"
    trajectory = Trajectory(path, on_event=seen.append)
    trajectory.add("root_delta", text="par")
    trajectory.add("batch_progress", batch=1, done=1, total=2, failures=0)
    trajectory.add("final", answer="42", forced=False)
    trajectory.close()
    assert [e["event"] for e in seen] == ["root_delta", "batch_progress", "final"]
    assert [e["event"] for e in trajectory.events] == ["final"]
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["final"]


def test_each_event_is_on_disk_as_soon_as_it_is_emitted(tmp_path: Path) -> None:
    # A crash or Ctrl-C must still leave every event so far in the file.
    path = tmp_path / "run.jsonl"
    trajectory = Trajectory(path)
    trajectory.add("run_start", query="q")
    assert json.loads(path.read_text())["event"] == "run_start"
    trajectory.close()


def test_a_file_is_appended_to_and_values_json_cannot_hold_become_text(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text('{"event": "earlier"}\n')
    trajectory = Trajectory(path)
    trajectory.add("output", stdout="x", where=tmp_path)
    trajectory.close()
    trajectory.close()  # twice is fine
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"event": "earlier"}
    assert json.loads(lines[1])["where"] == str(tmp_path)


def test_without_a_path_events_are_kept_in_memory_only() -> None:
    trajectory = Trajectory()
    trajectory.add("usage", sub_calls=0)
    assert trajectory.events[0]["event"] == "usage"
    trajectory.close()


def test_the_event_vocabulary_is_one_set_and_transient_events_belong_to_it() -> None:
    assert frozenset(get_args(EventName)) == EVENT_NAMES
    assert len(EVENT_NAMES) == len(get_args(EventName))
    assert TRANSIENT_EVENTS <= EVENT_NAMES
