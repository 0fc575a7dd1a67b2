"""Runs the corpus against a backend and judges every payload.

The harness builds the real stack a deployment has -- the offline model server over
real HTTP, a :class:`~rlm.provider.client.ModelClient` whose API key is the canary, a real
:class:`~rlm.subcalls.batcher.Batcher` and a :class:`~rlm.bridge.SessionBridge` per
sandbox -- with the canary also in the host environment. Each payload then gets a
fresh :class:`~rlm.session.SessionState` (so budgets are per payload) and is judged
on what came back *and* on what the host saw: every bridge frame, the loopback
listeners, the host directory, a second ("victim") session, the model server's
request count, the host's peak memory, the run's tree and the image's identity.

The attacker's runs have what a deployment with recursion and tools gives model
code: canary host tools and a real child runner (:mod:`rlm.security.tooling`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from dataclasses import replace
from types import TracebackType
from typing import Any

import anyio

from rlm.backends.base import Sandbox
from rlm.children import Children
from rlm.config import RLMConfig
from rlm.errors import VariableNotFound
from rlm.events import Event
from rlm.provider.client import ModelClient
from rlm.security.corpus import MARKER, Payload
from rlm.security.hostside import (
    Canary,
    HostFixtures,
    ProcessSnapshot,
    peak_rss_mb,
    reset_peak_rss,
)
from rlm.security.judge import (
    VARIABLE_READ_LIMIT,
    Observation,
    Rules,
    describe,
    describe_tree,
    host_integrity,
    integrity_changes,
    judge,
)
from rlm.security.recording import HOST_STALL_LIMIT, Heartbeat, RecordingBridge
from rlm.security.report import PayloadResult, TargetReport
from rlm.security.targets import Target
from rlm.security.tooling import (
    CHILD_ITERATIONS,
    CHILD_MODEL,
    MAX_DEPTH,
    AttackTools,
    child_script,
    children_config,
)
from rlm.session import SessionLimits, SessionState
from rlm.stack import BackendChoice, build_session
from rlm.subcalls.batcher import Batcher
from rlm.subcalls.retry import RetryPolicy
from rlm.testing import OfflineModelServer

SUB_MODEL = "sub"
#: Limits every payload's session runs under; the corpus's bridge attacks aim at them.
SUITE_LIMITS = SessionLimits(
    max_sub_calls=40,
    max_prompt_chars=20_000,
    max_batch_size=16,
    max_concurrent=8,
    # Children are real runs with sandboxes of their own: few, so the corpus stays
    # quick, and few at once.
    max_children=3,
    max_live_children=2,
    max_child_context_chars=200_000,
)
SUITE_RETRY = RetryPolicy(max_tries=2, base_delay=0.05, max_delay=0.2, max_elapsed=2.0)
#: The context loaded into every sandbox; payloads may read it, it holds nothing secret.
SUITE_CONTEXT = "The capital of Atlantis is Poseidonia.\n" * 50
#: Characters each cell may print (kept small so the output flood stays cheap).
SUITE_OUTPUT_LIMIT = 4_000
#: Seconds the provider may still be serving a payload's sub-calls after its cell ended.
_LINGER_LIMIT = 5.0
#: MiB the host process may grow by, at its peak, while one payload runs in a sandbox
#: outside it: a session's frames are capped at 256 MiB per message, and holding one
#: such message, and what it decodes to, must not cost the host more than this.
HOST_PEAK_GROWTH_MB = 600.0


class SecurityHarness:
    """The host-side world the corpus attacks. Use as ``async with SecurityHarness():``."""

    def __init__(
        self,
        *,
        grace: float = 8.0,
        limits: SessionLimits = SUITE_LIMITS,
        output_limit: int = SUITE_OUTPUT_LIMIT,
        canary: Canary | None = None,
    ) -> None:
        self.grace = grace
        self.limits = limits
        self.output_limit = output_limit
        #: A canary given by the caller is already in the environment (the caller's
        #: job, so harnesses running side by side never unset each other's).
        self._own_canary = canary is None
        self.canary = canary or Canary.new()
        # A copy of the limits: one changed in place would still equal itself.
        self.rules = Rules(
            grace, output_limit, self.canary, limits.max_sub_calls, limits=replace(limits)
        )
        self.tools: AttackTools | None = None
        self.fixtures: HostFixtures | None = None
        self.server: OfflineModelServer | None = None
        self.client: ModelClient | None = None
        self.batcher: Batcher | None = None
        self.victim = SessionState(sub_model=SUB_MODEL, tenant="victim-tenant")
        #: Exceptions host code could not raise while an in-process target ran.
        self.unraisable: list[str] = []
        self._saved_env: dict[str, str | None] | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> SecurityHarness:
        if self._own_canary:
            self._saved_env = self.canary.export()
        self.fixtures = HostFixtures(self.canary)
        self.tools = AttackTools(self.canary, self.fixtures.secret_file)
        self.server = OfflineModelServer(scripts={CHILD_MODEL: child_script()}).start()
        self.client = ModelClient(
            api_key=self.canary.value, base_url=self.server.base_url, timeout=10.0
        )
        # Quick retries: payloads provoke provider failures on purpose, and the
        # default backoff (seconds, doubling) would spend their cell time waiting.
        self.batcher = Batcher(self.client, retry=SUITE_RETRY)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.server is not None:
            self.server.stop()
        if self.tools is not None:
            self.tools.close()
        if self.fixtures is not None:
            self.fixtures.close()
        if self._saved_env is not None:
            Canary.restore(self._saved_env)
            self._saved_env = None

    def placeholders(self) -> dict[str, str]:
        assert self.fixtures is not None
        return {
            **self.fixtures.placeholders(),
            "@VICTIM_SESSION@": self.victim.session_id,
            "@VICTIM_TENANT@": self.victim.tenant,
            "@MARKER@": MARKER,
            "@HOST_PID@": str(os.getpid()),
            "@MODEL_PORT@": self.server.base_url.rsplit(":", 1)[1].split("/")[0]
            if self.server is not None
            else "9",
        }

    def new_session(self, events: list[Event] | None = None) -> SessionState:
        """A payload's run; its children report to ``events`` (they inherit the sink)."""
        return SessionState(
            sub_model=SUB_MODEL,
            limits=self.limits,
            tenant="attacker-tenant",
            emit=None if events is None else events.append,
        )

    # -- running ------------------------------------------------------------------

    def rules_for(self, target: Target) -> Rules:
        """The bounds on ``target``: with children, none may reach the depth limit."""
        assert self.tools is not None
        tools = self.tools.tools
        return replace(
            self.rules,
            max_depth=MAX_DEPTH if target.child_config is not None else 1,
            tool_limits={
                name: limit
                for name in tools.names
                if (limit := tools.max_calls_of(name)) is not None
            },
        )

    def children_for(self, target: Target) -> Children | None:
        """Child runs as ``target``'s deployment makes them, sharing the suite's batcher."""
        if target.child_config is None:
            return None
        assert self.batcher is not None and self.tools is not None
        config = children_config(target.child_config.with_(limits=self.limits))
        backend = BackendChoice("docker" if config.backend == "docker" else "restricted", "")
        return Children(config, backend, self.batcher, tools=self.tools.tools)

    async def start_sandbox(self, target: Target) -> tuple[Sandbox, RecordingBridge]:
        assert self.batcher is not None and self.tools is not None
        canary = self.canary
        stack = build_session(
            RLMConfig(sub_model=SUB_MODEL),
            batcher=self.batcher,
            session=self.new_session(),
            sandboxes=target.factory,
            bridge=lambda batcher, session, **parts: RecordingBridge(
                batcher, session, canary, **parts
            ),
            children=self.children_for(target),
            tools=self.tools.tools,
        )
        await stack.start(SUITE_CONTEXT)
        assert isinstance(stack.bridge, RecordingBridge)
        return stack.sandbox, stack.bridge

    async def run_target(self, target: Target, payloads: list[Payload]) -> TargetReport:
        """Run every payload that applies to ``target``; then check the host's health."""
        if not target.in_process:
            return await self._run_target(target, payloads)
        # Exceptions that host code running on a cell's thread could not raise (a stop
        # landing in a finalizer) are noted, not kept: the default hook of a test
        # runner keeps their tracebacks, and with them whatever the cell held.
        previous = sys.unraisablehook
        sys.unraisablehook = self._note_unraisable
        try:
            return await self._run_target(target, payloads)
        finally:
            # Garbage the payloads left in reference cycles is finalized now, under
            # this hook. Left to a later collection it can be finalized anywhere: in
            # CI one ran deep inside the JSON decoder of a Docker target's "nests too
            # deeply" frame, where the test runner's hook could not even repr it.
            gc.collect()
            sys.unraisablehook = previous

    def _note_unraisable(self, unraisable: Any) -> None:
        where = getattr(unraisable.object, "__qualname__", type(unraisable.object).__name__)
        self.unraisable.append(f"{unraisable.exc_type.__name__} ignored in {where}")

    async def _run_target(self, target: Target, payloads: list[Payload]) -> TargetReport:
        report = TargetReport(backend=target.name, host_before=ProcessSnapshot.take())
        started = time.monotonic()
        fingerprint = target.fingerprint() if target.fingerprint else None
        current: tuple[Sandbox, RecordingBridge] | None = None
        try:
            for payload in payloads:
                if not payload.applies_to(target.kind):
                    continue
                begun = time.monotonic()
                if payload.isolate and current is not None:
                    await _close_quietly(current[0])
                    current = None
                if current is None:
                    try:
                        current = await self.start_sandbox(target)
                    except Exception as exc:
                        report.results.append(
                            PayloadResult(
                                payload.id,
                                payload.category,
                                target.name,
                                problems=[f"the sandbox did not start: {exc}"],
                            )
                        )
                        continue
                result, broken = await self.run_payload(target, payload, *current)
                report.results.append(result)
                # A payload that got through may have left something behind (a
                # variable, a patched object): the next one gets a clean sandbox.
                if broken or payload.isolate or not result.contained:
                    await _close_quietly(current[0])
                    current = None
                # The whole cost of the payload: starting and closing its sandbox too.
                result.seconds = time.monotonic() - begun
        finally:
            if current is not None:
                await _close_quietly(current[0])
        report.results.append(await self._fresh_cell(target))
        if target.fingerprint is not None:
            after = target.fingerprint()
            problems = []
            if fingerprint is None or after != fingerprint:
                problems.append(f"the sandbox image changed or vanished: {fingerprint} -> {after}")
            report.results.append(
                PayloadResult("health.image-unchanged", "health", target.name, problems)
            )
        if target.close is not None:
            target.close()
        report.host_after = ProcessSnapshot.take()
        report.seconds = time.monotonic() - started
        return report

    async def _fresh_cell(self, target: Target) -> PayloadResult:
        """After the whole corpus, a new sandbox still starts and runs a cell."""
        result = PayloadResult("health.fresh-sandbox", "health", target.name)
        try:
            sandbox, _ = await self.start_sandbox(target)
            try:
                cell = await sandbox.execute("print(6 * 7, llm_query('ping'))", 30.0)
            finally:
                await _close_quietly(sandbox)
        except Exception as exc:
            result.problems.append(f"a fresh sandbox failed: {exc!r}")
            return result
        if cell.error is not None or "42 echo: ping" not in cell.stdout:
            result.problems.append("a fresh sandbox did not run a simple cell")
            result.evidence = f"stdout={cell.stdout[:200]!r} error={(cell.error or '')[:300]!r}"
        return result

    async def run_payload(
        self, target: Target, payload: Payload, sandbox: Sandbox, bridge: RecordingBridge
    ) -> tuple[PayloadResult, bool]:
        """Run one payload in ``sandbox``; returns its result and whether to restart."""
        assert self.fixtures is not None and self.server is not None and self.tools is not None
        events: list[Event] = []
        session = self.new_session(events)
        bridge.session = session
        bridge.reset()
        self.tools.reset()
        victim_tool_hits = self.tools.victim_hits
        child_roots_mark = self.server.stats.models[CHILD_MODEL]
        listen_mark = self.fixtures.listeners.count()
        requests_mark = self.server.stats.requests
        in_flight_mark = self.server.stats.in_flight
        unraisable_mark = len(self.unraisable)
        victim_calls = (self.victim.calls_admitted, self.victim.usage.sub_calls)
        integrity = host_integrity()
        # In-process targets share the host's memory by design (bounded by their own
        # watchdog); for the others, what a sandbox makes the host hold is judged.
        peak_from = None
        if not target.in_process and reset_peak_rss():
            peak_from = peak_rss_mb("VmRSS")
        code = payload.render(self.placeholders())
        seen = Observation(code=code, events=events)
        heartbeat = Heartbeat()
        async with anyio.create_task_group() as watch:
            watch.start_soon(heartbeat.run)
            broken = await self._attack(sandbox, payload, seen)
            heartbeat.stop()
            watch.cancel_scope.cancel()
        expect = payload.expectation(target.kind, target.runtime)
        problems = judge(self.rules_for(target), payload, expect, seen, bridge.leaks, session)
        if self.tools.victim_hits != victim_tool_hits:
            problems.append("another run's tool was called")
        if heartbeat.worst > HOST_STALL_LIMIT:
            problems.append(
                f"the host's event loop stalled for {heartbeat.worst:.1f} s while the payload "
                f"ran (limit {HOST_STALL_LIMIT:g} s): every other session on this host froze"
            )
        if peak_from is not None and (grew := peak_rss_mb() - peak_from) > HOST_PEAK_GROWTH_MB:
            problems.append(
                f"the host process grew by {grew:,.0f} MiB at its peak while the payload ran "
                f"(limit {HOST_PEAK_GROWTH_MB:,.0f} MiB): a sandbox made the host hold that much"
            )
        if victim_calls != (self.victim.calls_admitted, self.victim.usage.sub_calls):
            problems.append("the victim session's counters changed")
        self.fixtures.listeners.sync()
        reached = self.fixtures.listeners.since(listen_mark)
        if reached:
            problems.append(f"reached a host listener: {'; '.join(reached[:3])}")
        lingering = await self._lingering_requests(in_flight_mark)
        if session.calls_admitted > sum(run.usage.sub_calls for run in session.tree.sessions):
            # Some were cancelled: a request already sent may reach a busy server only
            # now, and must be counted for this payload, not the next one.
            await self._settle_requests()
        # Children's root models are called by the host, not by model code: they are
        # bounded by the children allowed, not by the sub-call budget.
        child_roots = self.server.stats.models[CHILD_MODEL] - child_roots_mark
        most = (self.limits.max_children or 0) * CHILD_ITERATIONS
        if child_roots > most:
            problems.append(f"{child_roots} child root calls, over the {most} its children allow")
        requests = self.server.stats.requests - requests_mark - child_roots
        budget = self.limits.max_sub_calls
        if budget is not None and requests > budget:
            problems.append(
                f"{requests} requests reached the provider, over the budget of {budget}"
            )
        if lingering:
            problems.append(
                f"{lingering} sub-calls were still running at the provider "
                f"{_LINGER_LIMIT:g} s after the cell ended"
            )
        retries = sum(
            m.retries for run in session.tree.sessions for m in run.usage.by_model.values()
        )
        if requests > session.calls_admitted + retries:
            problems.append(
                f"the model server got {requests} requests but only "
                f"{session.calls_admitted} sub-calls (+{retries} retries) were admitted"
            )
        changed = integrity_changes(integrity, host_integrity())
        if changed:
            problems.append(f"host objects were modified: {changed[:5]}")
        writes = self.fixtures.host_writes()
        if writes:
            problems.append(f"files appeared in the host directory: {writes[:5]}")
            self.fixtures.remove_writes()  # blamed on this payload only
        if not self.fixtures.secret_intact():
            problems.append("the host's secret file was changed")
        evidence = describe(seen).replace(self.canary.value, "<CANARY>")
        evidence += describe_tree(session, events)
        if heartbeat.worst > 0.5:
            evidence += f" | host loop stalled {heartbeat.worst:.1f}s"
        ignored = self.unraisable[unraisable_mark:]
        if ignored:
            evidence += f" | in host code: {'; '.join(sorted(set(ignored)))[:300]}"
        if seen.result is not None and seen.result.state_lost:
            broken = True
        return (
            PayloadResult(
                payload.id,
                payload.category,
                target.name,
                problems=problems,
                evidence=evidence,
                seconds=seen.seconds,
            ),
            broken,
        )

    async def _lingering_requests(self, mark: int) -> int:
        """Requests the provider still serves for a payload that ended, after a wait."""
        assert self.server is not None
        # Polled: the server counts in a thread of its own, with no event to wait on.
        for _ in range(int(_LINGER_LIMIT / 0.05)):
            if self.server.stats.in_flight <= mark:
                return 0
            await anyio.sleep(0.05)
        return max(0, self.server.stats.in_flight - mark)

    async def _settle_requests(self, quiet: float = 0.3, most: float = 2.0) -> None:
        """Wait until the model server has counted no new request for ``quiet`` seconds."""
        assert self.server is not None
        last, still, waited = self.server.stats.requests, 0.0, 0.0
        while still < quiet and waited < most:
            await anyio.sleep(0.05)
            waited += 0.05
            now = self.server.stats.requests
            still = still + 0.05 if now == last else 0.0
            last = now

    async def _attack(self, sandbox: Sandbox, payload: Payload, seen: Observation) -> bool:
        """Run the cell, then read its variables back; True if the sandbox must go."""
        started = time.monotonic()
        with anyio.move_on_after(payload.timeout + self.grace) as scope:
            try:
                seen.result = await sandbox.execute(seen.code, payload.timeout)
            except Exception as exc:
                seen.raised = exc
            finally:
                # As the root loop does after every cell: what the cell left running
                # (streams it never closed) ends with it.
                with anyio.move_on_after(30, shield=True), contextlib.suppress(Exception):
                    await sandbox.bridge.cell_finished()
        seen.overran = scope.cancelled_caught
        seen.seconds = time.monotonic() - started
        broken = seen.overran or seen.raised is not None
        if broken:
            return True
        for name in payload.variables:
            try:
                with anyio.fail_after(VARIABLE_READ_LIMIT):
                    seen.variables[name] = await sandbox.get_variable(name)
            except VariableNotFound:
                continue
            except TimeoutError:
                seen.unreadable.append(name)
                broken = True
            except Exception as exc:
                seen.variables[name] = f"<could not read: {exc!r}>"
                broken = True
        return broken


async def _close_quietly(sandbox: Sandbox) -> None:
    # A broken sandbox must not stop the suite: the next payload gets a new one.
    with anyio.move_on_after(30, shield=True), contextlib.suppress(Exception):
        await sandbox.close()


async def run_corpus(
    targets: list[Target],
    payloads: list[Payload],
    *,
    grace: float = 8.0,
    parallel: bool = False,
) -> list[TargetReport]:
    """Attack every target with ``payloads``; reports come back in ``targets``' order.

    Every target gets a harness of its own (listeners, model server, victim) and all
    share one canary, which stays in the environment throughout. In-process targets
    run one at a time with nothing beside them: they share the host's event loop and
    modules, so anything they break must be blamed on them alone. With ``parallel``
    the others (containers) are then attacked side by side.
    """
    canary = Canary.new()
    reports: dict[int, TargetReport] = {}

    async def attack(index: int) -> None:
        async with SecurityHarness(grace=grace, canary=canary) as harness:
            reports[index] = await harness.run_target(targets[index], payloads)

    saved = canary.export()
    try:
        apart = [i for i, t in enumerate(targets) if t.in_process or not parallel]
        for index in apart:
            await attack(index)
        async with anyio.create_task_group() as group:
            for index in range(len(targets)):
                if index not in apart:
                    group.start_soon(attack, index)
    finally:
        Canary.restore(saved)
    return [reports[i] for i in range(len(targets))]
