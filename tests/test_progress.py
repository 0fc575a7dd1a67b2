"""The progress bar's ETA column: fed by batch_progress's eta_s, counting down between events."""

from __future__ import annotations

import io
import time

from rich.console import Console

from rlm.progress import EtaColumn, RunReporter


def reporter() -> RunReporter:
    return RunReporter(Console(file=io.StringIO(), width=120))


def eta_text(report: RunReporter) -> str:
    [task] = report.progress.tasks
    return EtaColumn().render(task).plain


def test_the_eta_shows_once_an_answer_has_come_and_counts_down() -> None:
    report = reporter()
    report({"event": "batch_start", "size": 100})
    assert eta_text(report) == "eta -:--:--"
    report({"event": "batch_progress", "done": 0, "total": 100, "eta_s": None})
    assert eta_text(report) == "eta -:--:--"
    report({"event": "batch_progress", "done": 10, "total": 100, "eta_s": 75.2})
    assert eta_text(report) == "eta 0:01:16"
    [task] = report.progress.tasks
    # Between events it keeps counting: 70 s later, 6 s are left.
    task.fields["eta_at"] -= 70
    assert eta_text(report) == "eta 0:00:06"
    task.fields["eta_at"] = time.monotonic() - 5
    assert eta_text(report) == "eta 0:00:00", "never below zero"


def test_events_without_an_eta_still_work() -> None:
    report = reporter()
    report({"event": "batch_start", "size": 3})
    report({"event": "batch_progress", "done": 3, "total": 3})
    assert eta_text(report) == "eta -:--:--"
    report({"event": "batch_end", "size": 3, "model": "m", "seconds": 0.1, "failures": 0})
    assert report.progress.tasks == []


async def test_a_tree_is_shown_with_children_indented_under_their_parent() -> None:
    from rlm import RLM
    from rlm.testing import OfflineModelServer
    from tests.support import ROOT_MODEL, make_config

    root = [
        "```repl\nrs = rlm_batch(['a', 'b'])\n```",
        "FINAL_VAR(rs)",
    ]
    child = ["```repl\nx = llm_batch([context, context + '!'])\n```", "FINAL_VAR(x)"]
    out = io.StringIO()
    report = RunReporter(Console(file=out, width=200, color_system=None))
    with OfflineModelServer(scripts={ROOT_MODEL: root, "root-child": child}) as server:
        config = make_config(server, max_depth=2, child_model="root-child")
        with report:
            await RLM(config, on_event=report).acompletion("ctx", "q")
    lines = out.getvalue().splitlines()
    child_lines = [line for line in lines if line.startswith("      ")]
    assert sum("child" in line and "answered" in line for line in lines) == 2
    # Each child's iterations and batches are one level in (4 spaces) past the root's.
    assert sum(line.startswith("    iteration 1") for line in lines) == 2
    assert sum(line.startswith("      llm_batch: 2 sub-calls") for line in child_lines) == 2
    assert sum(line.startswith("iteration 1") for line in lines) == 1
