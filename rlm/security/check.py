"""``rlm security-check``: the attack corpus against the user's own deployment."""

from __future__ import annotations

import functools
import json
import logging

import anyio
from rich.console import Console

from rlm.errors import RLMError
from rlm.security.corpus import CorpusError, load_corpus
from rlm.security.harness import SUITE_OUTPUT_LIMIT, run_corpus
from rlm.security.report import SuiteReport
from rlm.security.targets import Target, select_targets


def run_suite(
    targets: list[Target],
    *,
    categories: list[str] | None = None,
    unavailable: list[tuple[str, str]] | None = None,
    unavailable_is_failure: bool = False,
) -> SuiteReport:
    """Attack ``targets`` with the shipped corpus (of ``categories``) and report."""
    payloads = load_corpus(categories=categories)
    # The bridge attacks make the Docker backend warn about each session they break;
    # here that is the expected outcome, judged in the report. Errors still show.
    backend_log = logging.getLogger("rlm.backends.docker")
    level = backend_log.level
    backend_log.setLevel(max(level, logging.ERROR))
    try:
        reports = anyio.run(functools.partial(run_corpus, targets, payloads, parallel=True))
    finally:
        backend_log.setLevel(level)
    return SuiteReport(
        targets=reports,
        unavailable=list(unavailable or []),
        unavailable_is_failure=unavailable_is_failure,
        posture=posture_problems(targets),
    )


def posture_problems(targets: list[Target]) -> list[str]:
    """What is wrong with the Docker ``targets``' posture, though the corpus may be
    contained: the engine's runtimes they use (a gVisor runtime registered without
    ``--oci-seccomp`` runs sandboxes with no seccomp filter), and what a probe in one
    sandbox of each sees (:mod:`rlm.security.posture`)."""
    docker_targets = [t for t in targets if t.kind == "docker"]
    runtimes = {t.runtime for t in docker_targets if t.runtime}
    if not runtimes:
        return []
    from rlm.backends.docker.checks import engine_runtime_problems
    from rlm.security.posture import probe

    problems = engine_runtime_problems(only=runtimes)
    for target in docker_targets:
        problems += anyio.run(probe, target)
    return problems


def run_security_check(
    *,
    backend: str | None = None,
    runtime: str | None = None,
    image: str | None = None,
    categories: list[str] | None = None,
    as_json: bool = False,
    console: Console | None = None,
    targets: list[Target] | None = None,
) -> int:
    """Run the corpus, print a table (or JSON); 0 when every payload was contained.

    With no ``backend`` every backend is attacked; one that cannot run here is
    reported (and fails the check only if it was asked for by name). ``targets``
    replaces the selection entirely (used to attack a custom configuration).
    """
    console = console or Console()
    unavailable: list[tuple[str, str]] = []
    if targets is None:
        try:
            targets, unavailable = select_targets(
                backend=backend, runtime=runtime, image=image, output_limit=SUITE_OUTPUT_LIMIT
            )
        except RLMError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 2
    asked = backend is not None or runtime is not None
    try:
        report = run_suite(
            targets,
            categories=categories,
            unavailable=unavailable,
            unavailable_is_failure=asked,
        )
    except CorpusError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    if as_json:
        # out(), not print(): no markup, wrapping or colour inside the JSON.
        console.out(json.dumps(report.to_dict(), indent=2), highlight=False)
    else:
        report.render(console)
    return 0 if report.ok else 1
