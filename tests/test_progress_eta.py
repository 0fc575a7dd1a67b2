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
