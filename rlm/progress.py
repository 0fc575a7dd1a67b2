"""Showing a run as it happens: root calls, cells and a progress bar per batch."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class EtaColumn(ProgressColumn):
    """The batcher's estimate of the time left (``eta_s``), counting down between events.

    Not rich's own TimeRemainingColumn: that one divides by the completion rate, which
    a wide batch gets badly wrong until its first wave lands; the batcher's estimate
    knows the concurrency. It arrives only with a completion, so the column counts
    down from the last one rather than freezing during a long wait.
    """

    def render(self, task: Task) -> Text:
        deadline = task.fields.get("eta_at")
        if deadline is None:
            return Text("eta -:--:--", style="progress.remaining")
        left = math.ceil(max(deadline - time.monotonic(), 0.0))
        return Text(f"eta {timedelta(seconds=left)}", style="progress.remaining")


class RunReporter:
    """An ``on_event`` callback that prints a run's progress to a console.

    A run with children is shown as a tree: each line is indented by its run's
    depth, so a child's iterations, cells and batches sit under the ``child`` line
    of the cell that started it. Batches of runs going at once each get a bar.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            EtaColumn(),
            console=console,
            transient=True,
        )
        #: Bars of the batches in flight, by (run id, batch number).
        self._batches: dict[tuple[str, int], TaskID] = {}

    def __enter__(self) -> RunReporter:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        pad = "    " * int(event.get("depth") or 0)

        def say(line: str) -> None:
            self.progress.console.print(pad + line)

        batch = (str(event.get("run_id")), int(event.get("batch") or 0))
        if kind == "run_start":
            say(
                f"[bold]rlm[/] {event['model']} → sub-model {event['sub_model']} "
                f"on [cyan]{event['backend']}[/] ({event['backend_reason']}); "
                f"context: {event['context']}"
            )
        elif kind == "root_call":
            tokens = event["prompt_tokens"] + event["completion_tokens"]
            say(
                f"[bold]iteration {event['iteration']}[/]: root model replied "
                f"({tokens:,} tokens, {event['seconds']:.2f} s)"
            )
        elif kind == "output":
            status = "[red]error[/]" if event.get("error") else "[green]ok[/]"
            if event.get("timed_out"):
                status = "[red]timed out[/]"
            say(f"  cell {status} in {event['duration_s']:.2f} s")
        elif kind == "batch_start":
            self._batches[batch] = self.progress.add_task(
                "batch", total=event["size"], eta_at=None, label=f"{pad}  sub-calls"
            )
        elif kind == "batch_progress" and batch in self._batches:
            eta = event.get("eta_s")
            eta_at = None if eta is None else time.monotonic() + eta
            self.progress.update(self._batches[batch], completed=event["done"], eta_at=eta_at)
        elif kind == "batch_end" and batch in self._batches:
            self.progress.remove_task(self._batches.pop(batch))
            failures = event.get("failures", 0)
            note = f", [red]{failures} failed[/]" if failures else ""
            if event.get("cancelled"):
                note += f", [yellow]cancelled after {event['done']}[/]"
            say(
                f"  llm_batch: {event['size']} sub-calls to {event['model']} "
                f"in {event['seconds']:.2f} s{note}"
            )
        elif kind == "child_start":
            say(f"  [magenta]child[/] {event['child_id']} ({event['model']}): {event['context']}")
        elif kind == "child_end":
            if event["status"] in ("answered", "forced"):
                say(f"  [magenta]child[/] {event['child_id']} answered in {event['seconds']:.2f} s")
            else:
                say(
                    f"  [magenta]child[/] {event['child_id']} [red]{event['status']}[/]: "
                    f"{event.get('error') or ''}"[:300]
                )
        elif kind == "tool_end" and not event.get("ok"):
            say(f"  [yellow]tool {event['name']} failed: {event.get('error')}[/]")
        elif kind == "limit_reached":
            say(f"  [yellow]limit reached: {event['limit']}; the run must answer now[/]")
        elif kind == "missing_variable":
            say(f"  [yellow]FINAL_VAR named a missing variable {event['name']!r}[/]")
        elif kind == "root_retry":
            say(
                f"  [yellow]root call failed ({event['kind']}); "
                f"retrying in {event['delay']:.1f} s[/]"
            )
