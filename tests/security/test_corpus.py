"""The attack corpus against every backend: restricted (in-process and in a worker
process), Docker+runc and Docker+runsc.

Each backend is attacked once per module with the whole corpus: a canary secret is in
the host environment (under its own name and as ``OPENAI_API_KEY``) and is the model
client's API key, and sub-calls go through a real Batcher and ModelClient to the
offline model server over HTTP (see :mod:`rlm.security.harness`). The tests below read
the report from different sides. The two Docker runtimes are attacked side by side;
the restricted backend, which runs in this process, is attacked alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from rlm.security import Payload, TargetReport, load_corpus, run_corpus
from rlm.security.harness import SUITE_OUTPUT_LIMIT
from rlm.security.hostside import ProcessSnapshot
from rlm.security.targets import docker_target, restricted_target
from tests.support import IMAGE

HEALTH = ("health.fresh-sandbox", "health.image-unchanged")
#: What the host process may gain over a whole corpus run. Threads: anyio's idle
#: workers; descriptors: the HTTP client's pooled connections to the model server
#: (both ends live in this process) and the engine's connection.
MAX_RSS_GROWTH_MB = 256
MAX_THREAD_GROWTH = 8
MAX_FD_GROWTH = 48


@dataclass
class Run:
    """One backend's report, and this process around the whole run."""

    report: TargetReport
    payloads: list[Payload]
    before: ProcessSnapshot
    after: ProcessSnapshot
    leftover_containers: list[str]


@pytest.fixture(scope="module")
def corpus() -> list[Payload]:
    return load_corpus()


@pytest.fixture(scope="module")
def restricted_run(corpus: list[Payload]) -> Run:
    target = restricted_target(SUITE_OUTPUT_LIMIT)
    before = ProcessSnapshot.take()
    [report] = anyio.run(functools.partial(run_corpus, [target], corpus))
    after = ProcessSnapshot.take()
    applies = [p for p in corpus if p.applies_to("restricted")]
    return Run(report, applies, before, after, [])


@pytest.fixture(scope="module")
def restricted_process_run(corpus: list[Payload]) -> Run:
    """The restricted backend with each session in a worker process of its own."""
    from rlm.backends.restricted.process import ProcessSandbox, drop_spares
    from rlm.config import RLMConfig
    from rlm.security.targets import Target

    target = Target(
        name="restricted:process",
        kind="restricted",
        factory=lambda bridge: ProcessSandbox(bridge, output_limit=SUITE_OUTPUT_LIMIT),
        child_config=RLMConfig(
            backend="restricted", restricted_isolation="process", output_limit=SUITE_OUTPUT_LIMIT
        ),
    )
    before = ProcessSnapshot.take()
    [report] = anyio.run(functools.partial(run_corpus, [target], corpus))
    drop_spares()  # the worker kept ready for a next session
    after = ProcessSnapshot.take()
    applies = [p for p in corpus if p.applies_to("restricted")]
    return Run(report, applies, before, after, [])


@pytest.fixture(scope="module")
def docker_runs(corpus: list[Payload], docker_client: Any) -> dict[str, Run]:
    from rlm.backends.docker import LABEL, OWNER, OWNER_LABEL

    targets = [docker_target(rt, IMAGE, SUITE_OUTPUT_LIMIT) for rt in ("runc", "runsc")]
    before = ProcessSnapshot.take()
    reports = anyio.run(functools.partial(run_corpus, targets, corpus, parallel=True))
    after = ProcessSnapshot.take()
    mine = docker_client.api.containers(
        all=True, filters={"label": [f"{LABEL}=1", f"{OWNER_LABEL}={OWNER}"]}
    )
    leftovers = [c["Id"][:12] for c in mine]
    applies = [p for p in corpus if p.applies_to("docker")]
    return {
        target.runtime or target.name: Run(report, applies, before, after, leftovers)
        for target, report in zip(targets, reports, strict=True)
    }


@pytest.fixture(
    params=[
        pytest.param("restricted", id="restricted"),
        pytest.param("restricted-process", id="restricted-process"),
        pytest.param("runc", id="docker-runc", marks=pytest.mark.docker),
        pytest.param("runsc", id="docker-runsc", marks=[pytest.mark.docker, pytest.mark.runsc]),
    ]
)
def run(request: pytest.FixtureRequest) -> Run:
    if request.param == "restricted":
        return request.getfixturevalue("restricted_run")  # type: ignore[no-any-return]
    if request.param == "restricted-process":
        return request.getfixturevalue("restricted_process_run")  # type: ignore[no-any-return]
    return request.getfixturevalue("docker_runs")[request.param]  # type: ignore[no-any-return]


def _describe(results: list[Any]) -> str:
    return "\n".join(
        f"- {r.payload_id}: {'; '.join(r.problems)}\n    evidence: {r.evidence[:500]}"
        for r in results
    )


def test_every_payload_ran(run: Run) -> None:
    ran = [r.payload_id for r in run.report.results if r.category != "health"]
    assert sorted(ran) == sorted(p.id for p in run.payloads)
    assert len(ran) >= 150


def test_every_payload_is_contained(run: Run) -> None:
    failures = [r for r in run.report.failures if r.category != "health"]
    assert not failures, (
        f"{len(failures)} of {len(run.report.results)} payloads got through on "
        f"{run.report.backend}:\n{_describe(failures)}"
    )


def test_the_canary_never_leaks(run: Run) -> None:
    # Outputs, errors, variables read back and every bridge frame in both directions.
    leaks = [r for r in run.report.results if any("canary" in p for p in r.problems)]
    assert not leaks, _describe(leaks)


def test_no_payload_reaches_a_host_listener_or_the_provider_directly(run: Run) -> None:
    reached = [
        r
        for r in run.report.results
        if any("listener" in p or "reached the provider" in p for p in r.problems)
    ]
    assert not reached, _describe(reached)


def test_resource_attacks_are_stopped_by_a_limit_with_a_clear_error(run: Run) -> None:
    resources = [r for r in run.report.results if r.category == "resources"]
    assert len(resources) >= 30
    bad = [r for r in resources if not r.contained]
    assert not bad, _describe(bad)
    # Where a limit must stop the payload, what stopped it is on record: an error
    # message, a timeout, a restart or a cut.
    kind = "restricted" if run.report.backend.startswith("restricted") else "docker"
    runtime = (run.report.backend.partition(":")[2] or None) if kind == "docker" else None
    expected = {p.id: p.expectation(kind, runtime).outcome for p in run.payloads}
    silent = [
        r
        for r in resources
        if expected[r.payload_id] in ("limited", "timeout", "error")
        and not any(k in r.evidence for k in ("error=", "timed_out", "state_lost", "raised"))
    ]
    assert not silent, _describe(silent)


def test_forged_and_oversized_frames_end_only_that_session(run: Run) -> None:
    bridge = [r for r in run.report.results if r.category == "bridge"]
    assert len(bridge) >= 40
    bad = [r for r in bridge if not r.contained]
    assert not bad, _describe(bad)
    fresh = next(r for r in run.report.results if r.payload_id == "health.fresh-sandbox")
    assert fresh.contained, fresh.problems


def test_the_host_process_is_unharmed(run: Run) -> None:
    before, after = run.before, run.after
    assert after.rss_mb - before.rss_mb < MAX_RSS_GROWTH_MB, (before, after)
    assert after.threads <= before.threads + MAX_THREAD_GROWTH, (before, after)
    assert after.fds <= before.fds + MAX_FD_GROWTH, (before, after)
    assert after.children == 0, (before, after)
    health = {r.payload_id: r for r in run.report.results if r.category == "health"}
    assert "health.fresh-sandbox" in health
    for result in health.values():
        assert result.contained, f"{result.payload_id}: {result.problems} {result.evidence}"


@pytest.mark.docker
@pytest.mark.parametrize("runtime", ["runc", pytest.param("runsc", marks=pytest.mark.runsc)])
def test_the_image_is_unchanged_and_no_container_is_left(
    runtime: str, docker_runs: dict[str, Run]
) -> None:
    run = docker_runs[runtime]
    image = next(r for r in run.report.results if r.payload_id == "health.image-unchanged")
    assert image.contained, image.problems
    assert run.leftover_containers == []


def _category(run: Run, category: str, least: int) -> list[Any]:
    results = [r for r in run.report.results if r.category == category]
    assert len(results) >= least
    bad = [r for r in results if not r.contained]
    assert not bad, _describe(bad)
    return results


def test_recursion_stays_within_the_depth_and_children_limits(run: Run) -> None:
    # Contained means: no run at depth 2 or deeper, at most 3 children and 2 alive at
    # once, the limits unchanged, forged fields refused with nothing admitted.
    results = {r.payload_id: r for r in _category(run, "recursion", 15)}
    # The children were real runs, one level down, whose own rlm_query went no deeper.
    for payload_id in ("rec-depth-child-goes-deeper", "rec-forge-context-claims-depth"):
        assert "1 children (deepest run at depth 1" in results[payload_id].evidence
    assert "3 children (deepest run at depth 1" in results["rec-depth-fork-bomb"].evidence


def test_tool_failures_reach_model_code_as_messages_only(run: Run) -> None:
    # Contained means: no canary, host path or traceback in what model code saw, every
    # tool within its call limit (children included), forged names and fields refused.
    results = {r.payload_id: r for r in _category(run, "tools", 15)}
    assert "lookup=3" in results["tool-call-limit-across-children"].evidence


def test_stream_abuse_is_refused_and_cancelled(run: Run) -> None:
    # Contained means: foreign, closed and forged ids refused, at most 16 open, and
    # nothing left running at the provider after a cell that never closed its streams.
    _category(run, "streams", 8)
