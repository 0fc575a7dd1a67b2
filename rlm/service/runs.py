"""The runs a replica owns: accepted, stored, run as tasks, followed, cancelled.

A run is admitted by the tenant's quotas, stored as ``queued``, and run as an
asyncio task: ``RLM(profile config, batcher=shared, pool=shared).acompletion``
with the tenant bound in its config, so the shared batcher's fairness and usage
are per tenant. Every event goes to the store (in small batches) and to the
readers following the run live. The run ends ``succeeded``, ``failed`` (with a
message for the client, never a host traceback), ``cancelled`` or, when this
replica stops or dies with it in flight, ``interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlm.config import RLMConfig
from rlm.errors import ModelCallError, RLMError, SandboxError
from rlm.service.live import EventLog
from rlm.service.slots import FairSlots

if TYPE_CHECKING:
    from rlm.core import RLM
    from rlm.result import RLMResult
    from rlm.service.config import Profile, ServiceConfig, Tenant
    from rlm.service.quotas import Admission, Quotas
    from rlm.service.store import RunRecord, Store

log = logging.getLogger("rlm.service")

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
RESTARTED = "the server restarted while this run was in flight"
STOPPED = "the server stopped while this run was in flight"
#: Seconds a run may go past its wall-time limit (for its forced-final turn, and
#: to close its sandbox) before it is cancelled outright.
WALL_GRACE_S = 60.0
#: How often a reader polls the store for a run another replica owns.
POLL_S = 0.5
#: How often a replica looks for its runs cancelled through another replica.
CANCEL_POLL_S = 1.0

#: Makes the RLM for one run: (its config, its event callback) -> RLM.
RLMFactory = Callable[[RLMConfig, Callable[[dict[str, Any]], None]], "RLM"]


def new_run_id() -> str:
    return "run_" + secrets.token_hex(12)


@dataclass(eq=False)
class ActiveRun:
    """A run this replica is running now."""

    record: RunRecord
    events: EventLog
    admission: Admission
    task: asyncio.Task[None] | None = None
    #: Why it was cancelled, when it was: the status and error to store.
    stop: tuple[str, str] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Tokens seen in its events so far (a run that fails has no final usage).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    live_children: int = 0
    result: RLMResult | None = None
    finishing: bool = False


@dataclass
class Finished:
    """What the manager tells its observers (metrics) about a run that ended."""

    record: RunRecord
    seconds: float
    sub_calls: int


class RunManager:
    """Runs this replica's runs; see the module's docstring."""

    def __init__(
        self,
        config: ServiceConfig,
        store: Store,
        quotas: Quotas,
        rlm_factory: RLMFactory,
        *,
        base: RLMConfig,
        on_finish: Callable[[Finished], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.quotas = quotas
        self.rlm_factory = rlm_factory
        self.base = base
        self.on_finish = on_finish
        self.replica = config.server.replica_id
        self.active: dict[str, ActiveRun] = {}
        self.slots = FairSlots(config.server.max_concurrent_runs)
        self._stopping = False

    # -- start and stop ------------------------------------------------------------------

    async def recover(self) -> list[str]:
        """Runs this replica (or a dead process of this host before it) left in
        flight are marked interrupted, with the reason; returns their ids."""
        ids = await self.store.mark_interrupted(self.replica, RESTARTED)
        # Alive before the first run is taken, so no other replica reaps them.
        await self.heartbeat()
        dead: set[str] = set()
        for tenant in self.config.tenants:
            for record in await self.store.list_runs(tenant.name, limit=1000):
                owner = record.owner
                if record.status in ("queued", "running") and owner and _dead_here(owner):
                    dead.add(owner)
        for owner in sorted(dead):
            ids += await self.store.mark_interrupted(owner, RESTARTED)
        if ids:
            log.warning("%d run(s) were in flight when the server stopped: interrupted", len(ids))
        return ids

    async def watch(self) -> None:
        """Forever: say this replica is alive; cancel the runs in flight here that a
        client cancelled through another replica (which can only mark them in the
        shared store), or that another replica gave up on as interrupted; and mark
        interrupted the runs of replicas that stopped saying they are alive."""
        timeout = self.config.server.replica_timeout_s
        # Six beats per timeout: a replica is reaped only after missing five.
        beat_every = max(0.2, timeout / 6)
        next_beat = 0.0
        while True:
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + beat_every
                await self.heartbeat()
                await self.reap_silent_replicas()
            await self._follow_stored_stops()
            await asyncio.sleep(min(CANCEL_POLL_S, beat_every))

    async def heartbeat(self) -> None:
        try:
            await self.store.heartbeat(self.replica, time.time())
        except Exception as exc:
            log.warning("could not store this replica's heartbeat: %s", exc)

    async def reap_silent_replicas(self) -> list[str]:
        """Runs of replicas silent for ``replica_timeout_s`` are marked interrupted
        (a replica on another host that died: its processes are not visible here)."""
        timeout = self.config.server.replica_timeout_s
        try:
            owners = await self.store.silent_owners(time.time() - timeout)
            ids: list[str] = []
            for owner in owners:
                if owner == self.replica:
                    continue  # alive, by definition; its own heartbeat write failed
                reason = f"its replica {owner} stopped answering for over {timeout:g} s"
                found = await self.store.mark_interrupted(owner, reason)
                if found:
                    log.warning("%d run(s) of silent replica %s: interrupted", len(found), owner)
                ids += found
        except Exception as exc:
            log.warning("could not look for silent replicas: %s", exc)
            return []
        return ids

    async def _follow_stored_stops(self) -> None:
        for run in list(self.active.values()):
            if run.stop is not None or run.finishing:
                continue
            try:
                stored = await self.store.get_run(run.record.tenant, run.record.id)
            except Exception as exc:
                log.warning("could not read run %s: %s", run.record.id, exc)
                return
            if stored is not None and stored.status in ("cancelled", "interrupted"):
                why = stored.error or "cancelled by the client"
                self._cancel(run, stored.status, why)

    async def shutdown(self, reason: str = STOPPED) -> None:
        """Cancel every run in flight, marking it interrupted; wait for them to end."""
        self._stopping = True
        runs = list(self.active.values())
        for run in runs:
            self._cancel(run, "interrupted", reason)
        for run in runs:
            await run.done.wait()

    # -- accepting a run -----------------------------------------------------------------

    async def submit(
        self,
        tenant: Tenant,
        profile: Profile,
        query: str,
        context: Any,
        *,
        context_bytes: int,
        idempotency_key: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """Admit, store and start a run; returns (the run, whether it is new).

        Raises QuotaExceeded when a quota refuses it; nothing is stored then. With an
        ``idempotency_key`` the tenant used before, the earlier run comes back.
        """
        from rlm.service.store import RunRecord

        if self._stopping:
            raise ShuttingDown()
        # Before anything is taken or stored: a profile whose settings do not make a
        # config must not leave a run queued forever.
        config = self._run_config(tenant, profile)
        admission = await self.quotas.admit(tenant, profile.name, context_bytes)
        try:
            record = RunRecord(
                id=new_run_id(),
                tenant=tenant.name,
                profile=profile.name,
                status="queued",
                query=query,
                created_at=time.time(),
                owner=self.replica,
                idempotency_key=idempotency_key,
                context_bytes=context_bytes,
            )
            stored, created = await self.store.create_run(record)
        except BaseException:
            admission.release()
            raise
        if not created:
            admission.release()
            return stored, False
        run = ActiveRun(stored, EventLog(self.store, stored.id), admission)
        self.active[stored.id] = run
        run.events.start()
        run.task = asyncio.get_running_loop().create_task(
            self._run(run, config, context), name=f"rlm run {stored.id}"
        )
        run.task.add_done_callback(lambda _: self._task_ended(run))
        return stored, True

    def _task_ended(self, run: ActiveRun) -> None:
        # A task cancelled before its first step never enters _run's body, so its
        # end would never be stored: end it here instead.
        if not run.finishing:
            status, reason = run.stop or ("cancelled", "the run was cancelled")
            asyncio.get_running_loop().create_task(
                self._finish(run, status, {"error": reason}, time.time())
            )

    def _run_config(self, tenant: Tenant, profile: Profile) -> RLMConfig:
        return profile.rlm_config(self.base, tenant=tenant)

    # -- running it ----------------------------------------------------------------------

    async def _run(self, run: ActiveRun, config: RLMConfig, context: Any) -> None:
        record = run.record
        started = time.time()
        status, fields = "failed", {}
        deadline: float | None = None
        holding = False
        try:
            # Queued until a slot frees (fairly across tenants); the wall-time
            # limit counts from here, not from the wait.
            await self.slots.acquire(record.tenant)
            holding = True
            started, deadline = time.time(), _hard_deadline(config)
            await self.store.update_run(record.id, status="running", started_at=started)
            record.status, record.started_at = "running", started
            rlm = self.rlm_factory(config, lambda event: self._on_event(run, event))
            with _timeout(deadline):
                result = await rlm.acompletion(context, record.query)
            run.result = result
            usage = result.usage.to_dict()
            usage["outcome"] = {
                "status": result.status,
                "stopped": result.stopped,
                "iterations": result.iterations,
                "children": result.children,
                "cost_usd": result.cost_usd,
            }
            status = "succeeded"
            fields = {
                "answer": result.answer,
                "usage": usage,
                "total_tokens": result.usage.total_tokens,
            }
        except asyncio.CancelledError:
            stop = run.stop or ("cancelled", "the run was cancelled")
            if run.stop is None and deadline is not None and time.monotonic() >= deadline:
                stop = ("failed", "the run went past its wall-time limit and was stopped")
            status, fields = stop[0], {"error": stop[1]}
        except Exception as exc:
            status, fields = "failed", {"error": _client_message(exc, record.id)}
        finally:
            if holding:
                self.slots.release(record.tenant)
            await self._finish(run, status, fields, started)

    async def _finish(
        self, run: ActiveRun, status: str, fields: dict[str, Any], started: float
    ) -> None:
        run.finishing = True
        record = run.record
        finished = time.time()
        if "usage" not in fields:
            fields["usage"] = {
                "prompt_tokens": run.prompt_tokens,
                "completion_tokens": run.completion_tokens,
                "total_tokens": run.prompt_tokens + run.completion_tokens,
                "partial": True,
            }
            fields["total_tokens"] = run.prompt_tokens + run.completion_tokens
        fields.update(status=status, finished_at=finished)
        try:
            # Shielded: a stop signal must not leave the run "running" in the store.
            await asyncio.shield(self._store_end(run, fields))
        finally:
            run.admission.release()
            self.quotas.record_tokens(record.tenant, int(fields.get("total_tokens") or 0))
            self.active.pop(record.id, None)
            for name, value in fields.items():
                setattr(record, name, value)
            run.done.set()
            if self.on_finish is not None:
                sub_calls = int((run.result.usage.sub_calls if run.result else 0) or 0)
                self.on_finish(Finished(record, finished - started, sub_calls))

    async def _store_end(self, run: ActiveRun, fields: dict[str, Any]) -> None:
        await run.events.flush()
        try:
            await self.store.update_run(run.record.id, **fields)
        except Exception:
            log.exception("could not store the end of run %s", run.record.id)
        await run.events.close()

    def _on_event(self, run: ActiveRun, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "root_call" or kind == "batch_end":
            run.prompt_tokens += int(event.get("prompt_tokens") or 0)
            run.completion_tokens += int(event.get("completion_tokens") or 0)
        elif kind == "child_start":
            run.live_children += 1
        elif kind == "child_end":
            run.live_children = max(0, run.live_children - 1)
        run.events.emit(event)

    # -- cancelling ----------------------------------------------------------------------

    async def cancel(self, record: RunRecord, reason: str = "cancelled by the client") -> RunRecord:
        """Cancel a run: at once if this replica runs it; else it is marked in the
        store, and its owner stops it within :data:`CANCEL_POLL_S` (a run whose owner
        died stays cancelled)."""
        run = self.active.get(record.id)
        if run is not None:
            self._cancel(run, "cancelled", reason)
            await run.done.wait()
            return run.record
        await self.store.update_run(
            record.id, status="cancelled", error=reason, finished_at=time.time()
        )
        return (await self.store.get_run(record.tenant, record.id)) or record

    def cancel_soon(self, run_id: str, reason: str) -> None:
        """:meth:`cancel` without waiting (from code that is itself being cancelled)."""
        run = self.active.get(run_id)
        if run is not None:
            self._cancel(run, "cancelled", reason)

    def _cancel(self, run: ActiveRun, status: str, reason: str) -> None:
        if run.stop is None:
            run.stop = (status, reason)
        if run.task is not None:
            run.task.cancel()

    # -- reading -------------------------------------------------------------------------

    async def wait(self, run_id: str) -> None:
        """Until the run has ended (at once if it is not in flight here)."""
        run = self.active.get(run_id)
        if run is not None:
            await run.done.wait()

    async def follow(
        self, tenant: str, run_id: str, after: int = 0
    ) -> AsyncIterator[tuple[int | None, dict[str, Any]]]:
        """The run's events after ``after``: the stored ones, then live ones as they
        happen (transient ones with seq None); ends when the run has ended."""
        run = self.active.get(run_id)
        if run is None:
            async for item in self._follow_stored(tenant, run_id, after):
                yield item
            return
        queue = run.events.subscribe()
        try:
            rereads = 0
            while True:
                rows = await self.store.events(run_id, after)
                for seq, event in rows:
                    yield seq, event
                    after = seq
                if rows:
                    continue
                log_ = run.events
                unwritten = list(log_.unwritten)
                # Written between the read above and now: read the store again, or
                # there would be a gap (a batch that failed to store never shows up,
                # hence the bound).
                if log_.seq - len(unwritten) > after and rereads < 3:
                    rereads += 1
                    continue
                for seq, event in unwritten:
                    if seq > after:
                        yield seq, event
                        after = seq
                break
            while (live := await queue.get()) is not None:
                number, event = live
                if number is not None:
                    if number <= after:
                        continue
                    after = number
                yield number, event
            # Written after the reader's queue closed (a reader that fell behind).
            for seq, event in await self.store.events(run_id, after):
                yield seq, event
        finally:
            run.events.unsubscribe(queue)

    async def _follow_stored(
        self, tenant: str, run_id: str, after: int
    ) -> AsyncIterator[tuple[int | None, dict[str, Any]]]:
        # Finished, or owned by another replica: the store is the only source.
        while True:
            rows = await self.store.events(run_id, after)
            for seq, event in rows:
                yield seq, event
                after = seq
            if rows:
                continue
            record = await self.store.get_run(tenant, run_id)
            if record is None or record.status in TERMINAL:
                for seq, event in await self.store.events(run_id, after):
                    yield seq, event
                return
            await asyncio.sleep(POLL_S)

    def tenant_active(self, tenant: str) -> int:
        return sum(1 for run in self.active.values() if run.record.tenant == tenant)

    def counts(self) -> dict[str, int]:
        """Runs in flight here by status, and their live sandboxes."""
        running = [r for r in self.active.values() if r.record.status == "running"]
        return {
            "queued": len(self.active) - len(running),
            "running": len(running),
            "sandboxes": sum(1 + r.live_children for r in running),
        }


class ShuttingDown(Exception):
    """The replica is stopping and takes no new runs."""


def _client_message(exc: BaseException, run_id: str) -> str:
    """What a client may read of why its run failed: rlm's own messages say what
    happened; anything else is a bug whose traceback stays in the server's log."""
    if isinstance(exc, ModelCallError):
        return f"the model provider failed: {exc}"
    if isinstance(exc, (SandboxError, RLMError)):
        return str(exc)
    if any(c.__module__.split(".")[0] in ("docker", "requests") for c in type(exc).__mro__):
        log.warning("run %s: Docker failed: %s", run_id, exc)
        return "the sandbox engine (Docker) failed; try again later"
    log.error("run %s failed", run_id, exc_info=exc)
    return f"internal error ({type(exc).__name__}); the server's log has the details"


def _hard_deadline(config: RLMConfig) -> float | None:
    wall = config.limits.max_wall_time_s
    if wall is None:
        return None
    return time.monotonic() + wall + config.limits.final_grace_s + WALL_GRACE_S


@contextlib.contextmanager
def _timeout(deadline: float | None) -> Any:
    if deadline is None:
        yield
        return
    task = asyncio.current_task()
    assert task is not None
    handle = asyncio.get_running_loop().call_at(
        asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic()), task.cancel
    )
    try:
        yield
    finally:
        handle.cancel()


def _dead_here(owner: str) -> bool:
    """Whether ``owner`` (``host:pid``) is a process of this host that is gone."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
