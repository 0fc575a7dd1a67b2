"""What a corpus run found: per payload, per backend, and as a table or JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from rlm.security.hostside import ProcessSnapshot


@dataclass
class PayloadResult:
    """One payload on one backend: contained, or the problems found and the evidence."""

    payload_id: str
    category: str
    backend: str
    problems: list[str] = field(default_factory=list)
    evidence: str = ""
    seconds: float = 0.0

    @property
    def contained(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.payload_id,
            "category": self.category,
            "backend": self.backend,
            "contained": self.contained,
            "problems": self.problems,
            "evidence": self.evidence,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class TargetReport:
    """Every payload's result on one backend, and the host process around the run."""

    backend: str
    results: list[PayloadResult] = field(default_factory=list)
    host_before: ProcessSnapshot | None = None
    host_after: ProcessSnapshot | None = None
    seconds: float = 0.0

    @property
    def failures(self) -> list[PayloadResult]:
        return [r for r in self.results if not r.contained]

    def by_category(self) -> dict[str, tuple[int, int]]:
        """category -> (payloads, failed)."""
        total: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        for r in self.results:
            total[r.category] += 1
            failed[r.category] += not r.contained
        return {c: (total[c], failed[c]) for c in sorted(total)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "available": True,
            "payloads": len(self.results),
            "contained": len(self.results) - len(self.failures),
            "failed": len(self.failures),
            "categories": {
                c: {"payloads": n, "contained": n - f, "failed": f}
                for c, (n, f) in self.by_category().items()
            },
            "failures": [r.to_dict() for r in self.failures],
            "host_before": self.host_before.to_dict() if self.host_before else None,
            "host_after": self.host_after.to_dict() if self.host_after else None,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class SuiteReport:
    """A whole run: each backend attacked, and those that could not be."""

    targets: list[TargetReport] = field(default_factory=list)
    unavailable: list[tuple[str, str]] = field(default_factory=list)
    #: Backends explicitly asked for that cannot run count as a failure of the check.
    unavailable_is_failure: bool = False
    #: What is wrong with the engine's set-up for the targets attacked (a gVisor
    #: runtime without ``--oci-seccomp``): each fails the check.
    posture: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[PayloadResult]:
        return [f for t in self.targets for f in t.failures]

    @property
    def ok(self) -> bool:
        if not self.targets:
            return False
        if self.unavailable_is_failure and self.unavailable:
            return False
        return not self.failures and not self.posture

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "payloads": sum(len(t.results) for t in self.targets),
            "failed": len(self.failures),
            "targets": [t.to_dict() for t in self.targets],
            "unavailable": [{"backend": n, "reason": r} for n, r in self.unavailable],
            "posture": list(self.posture),
        }

    def render(self, console: Console) -> None:
        """The summary table, then one row per failure with its evidence."""
        table = Table(title="rlm security-check", show_lines=False)
        for column in ("backend", "category", "payloads", "contained", "failed", "failed ids"):
            table.add_column(column, justify="right" if column in ("payloads",) else "left")
        for target in self.targets:
            failed_ids: dict[str, list[str]] = {}
            for r in target.failures:
                failed_ids.setdefault(r.category, []).append(r.payload_id)
            for category, (n, f) in target.by_category().items():
                ids = ", ".join(failed_ids.get(category, []))
                table.add_row(
                    target.backend,
                    category,
                    str(n),
                    str(n - f),
                    f"[red]{f}[/red]" if f else "0",
                    ids,
                )
        console.print(table)
        for name, reason in self.unavailable:
            style = "red" if self.unavailable_is_failure else "yellow"
            console.print(f"[{style}]{name}: not run: {reason}[/{style}]")
        for problem in self.posture:
            console.print(f"[red]engine set-up: {problem}[/red]", highlight=False)
        if self.failures:
            detail = Table(title="failures", show_lines=True)
            for column in ("backend", "payload", "problems", "evidence"):
                detail.add_column(column, overflow="fold")
            for r in self.failures:
                detail.add_row(r.backend, r.payload_id, "\n".join(r.problems), r.evidence[:600])
            console.print(detail)
        for target in self.targets:
            if target.host_before and target.host_after:
                b, a = target.host_before, target.host_after
                console.print(
                    f"{target.backend}: host process rss {b.rss_mb} -> {a.rss_mb} MB, "
                    f"threads {b.threads} -> {a.threads}, fds {b.fds} -> {a.fds}, "
                    f"{target.seconds:.1f} s"
                )
        total = sum(len(t.results) for t in self.targets)
        verdict = "[green]all contained[/green]" if self.ok else "[red]FAILED[/red]"
        console.print(f"{total} payload runs, {len(self.failures)} failed: {verdict}")
