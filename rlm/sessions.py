"""Persistent sessions: one sandbox for many questions, forks, snapshots.

``RLM.session()`` keeps one sandbox alive across turns. Turn k binds a new context
(when given) as ``context_k`` and as ``context``; earlier questions and answers are
in ``history``; the root model is told what exists. Each turn is a run of its own
(its own limits, usage and result); the session adds them up. A session closes on
:meth:`RLMSession.aclose`, at the end of its ``async with`` / ``with`` block, or
after ``idle_timeout`` seconds without a turn. A sandbox that had to be restarted
during a turn is reported (``RLMResult.state_lost``, and the next turn's note to the
model), never hidden.

``fork(n)`` and ``snapshot()`` carry a session's variables through the sandboxes
only: the source sandbox serializes them, the target sandbox reads them, and the
host moves the bytes without reading the sandbox's part (it never unpickles
anything). A snapshot is :data:`MAGIC`, a small JSON header the host writes (turn
count and history), and the sandbox's own blob.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import anyio.from_thread

from rlm.answers import answer_schema as check_schema
from rlm.children import Children
from rlm.errors import ConfigurationError, RLMError, SandboxError, SnapshotError
from rlm.loop import RootLoop
from rlm.overlap import beside
from rlm.prompts import NO_CONTEXT, describe_context
from rlm.result import RLMResult, finished_status
from rlm.stack import SessionStack, build_session, model_client
from rlm.subcalls.batcher import Batcher
from rlm.trajectory import Trajectory
from rlm.tree import RunTree
from rlm.usage import Usage

if TYPE_CHECKING:
    from rlm.backends.docker import ContainerSource
    from rlm.config import RLMConfig
    from rlm.stack import BackendChoice
    from rlm.tools import ToolSet

T = TypeVar("T")


class RLM(Protocol):
    """What a session needs of the :class:`~rlm.core.RLM` it belongs to."""

    config: RLMConfig
    trajectory_path: Any
    on_event: Callable[[dict[str, Any]], None] | None
    stream: bool
    tools: ToolSet
    child_tools: ToolSet

    async def backend(self) -> BackendChoice: ...
    @property
    def backend_reason(self) -> str: ...
    @property
    def shared_batcher(self) -> Batcher | None: ...
    @property
    def pool(self) -> ContainerSource | None: ...


#: The first bytes of every session snapshot.
MAGIC = b"RLMSESSION1\n"
#: Bytes of a snapshot's host header at most (its history included).
MAX_HEADER = 64 << 20
#: A snapshot's sandbox part at most, by default.
DEFAULT_MAX_SNAPSHOT = 512 << 20
#: Characters of each earlier answer kept in ``history``.
_HISTORY_ANSWER = 100_000


class SessionClosed(RLMError):
    """The session was closed (or went idle); start a new one or restore a snapshot."""


class RLMSession:
    """A conversation with an RLM over one sandbox; see :meth:`rlm.core.RLM.session`."""

    def __init__(
        self,
        rlm: RLM,
        *,
        idle_timeout: float | None = 600.0,
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT,
        _restore: bytes | None = None,
        _portal: _Portal | None = None,
    ) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise ConfigurationError("idle_timeout must be positive (or None)")
        self.rlm = rlm
        self.config = rlm.config
        self.idle_timeout = idle_timeout
        self.max_snapshot_bytes = max_snapshot_bytes
        #: Turns answered so far.
        self.turns = 0
        #: Earlier turns as ``{"query": ..., "answer": ...}``, as the sandbox sees them.
        self.history: list[dict[str, Any]] = []
        #: Each turn's usage, in order.
        self.turn_usage: list[Usage] = []
        #: Turns during which the sandbox had to be restarted (its variables lost).
        self.state_lost_turns: list[int] = []
        #: What the last snapshot could not carry: name → why.
        self.skipped: dict[str, str] = {}
        self._restore = _restore
        self._portal = _portal
        self._stack: SessionStack | None = None
        self._batcher: Batcher | None = None
        self._owns_client = False
        self._children: Children | None = None
        self._trajectory: Trajectory | None = None
        self._contexts: list[str] = []
        #: What the latest context is (:func:`~rlm.prompts.describe_context`).
        self._latest = NO_CONTEXT
        self._lost_since_last_turn = False
        self._closed = False
        self._sandbox_started = False
        self._lock = anyio.Lock()
        self._idle: asyncio.TimerHandle | None = None
        self._idle_close: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> RLMSession:
        """Start the sandbox (and restore the snapshot it was made from)."""
        rlm, config = self.rlm, self.config
        if not config.model:
            raise ConfigurationError(
                "no root model: set RLM_MODEL (or pass model=...), "
                "e.g. RLM_MODEL=gpt-4.1 with OPENAI_API_KEY set"
            )
        if config.limits.max_cost_usd is not None and (unpriced := config.unpriced_models()):
            raise ConfigurationError(
                f"max_cost_usd needs a price for every model; add {', '.join(unpriced)} to "
                "the price table (RLM_PRICES='{\"model\": [input, output]}', US dollars "
                "per million tokens)"
            )
        header, blob = _split(self._restore) if self._restore is not None else ({}, None)
        backend = await rlm.backend()
        self._trajectory = Trajectory(rlm.trajectory_path, on_event=rlm.on_event)
        batcher = rlm.shared_batcher
        self._owns_client = batcher is None
        if batcher is None:
            batcher = Batcher(model_client(config))
        self._batcher = batcher
        try:
            if config.max_depth > 1:
                self._children = Children(
                    config, backend, batcher, pool=rlm.pool, tools=rlm.child_tools
                )
            self._stack = build_session(
                config,
                backend,
                batcher=batcher,
                pool=rlm.pool,
                emit=self._trajectory.emit,
                children=self._children,
                tools=rlm.tools,
            )
            if blob is not None:
                # A restored session starts its sandbox now, so a bad blob fails here;
                # a new one at its first turn, after that turn's run_start.
                await self._start_sandbox(self._stack)
                await self._stack.sandbox.restore(blob)
                self._take_header(header)
        except BaseException:
            await self.aclose()
            raise
        self._arm_idle()
        return self

    async def aclose(self) -> None:
        """Close the sandbox; safe to call twice."""
        self._closed = True
        self._disarm_idle()
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            if self._owns_client and self._batcher is not None:
                self._owns_client = False
                with anyio.CancelScope(shield=True):
                    await self._batcher.client.aclose()
            if self._trajectory is not None:
                self._trajectory.close()

    async def __aenter__(self) -> RLMSession:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def sandbox_resets(self) -> int:
        """Times this session's sandbox lost its variables so far (a restart), counted
        even in a turn that was cancelled and so has no result to say it."""
        return self._stack.sandbox.resets if self._stack is not None else 0

    @property
    def usage(self) -> Usage:
        """Everything the session's turns used, by model and by depth."""
        total = Usage()
        for usage in self.turn_usage:
            total.add(usage)
        return total

    # -- turns ---------------------------------------------------------------------------

    async def acompletion(
        self, context: Any = None, query: str = "", *, answer_schema: Any = None
    ) -> RLMResult:
        """Answer ``query``; a ``context`` given is bound as the next ``context_k``."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty str")
        if context is not None and not isinstance(context, (str, list, dict)):
            raise TypeError(
                f"context must be a str, a list or a JSON-able dict, not {type(context).__name__}"
            )
        schema = check_schema(answer_schema)
        async with self._lock:
            stack = self._open()
            self._disarm_idle()
            try:
                return await self._turn(stack, context, query, schema)
            finally:
                if not self._closed:
                    self._arm_idle()

    async def _turn(self, stack: SessionStack, context: Any, query: str, schema: Any) -> RLMResult:
        config, state, sandbox = self.config, stack.session, stack.sandbox
        assert self._trajectory is not None and self._batcher is not None
        assert config.model is not None
        started = time.monotonic()
        turn = self.turns + 1
        # Each turn is a run: limits and usage of its own.
        state.tree = RunTree(config.limits, config.prices, started=started)
        state.tree.join(state)
        state.usage = Usage()
        mark = len(self._trajectory.events)
        state.event(
            "run_start",
            query=query,
            context=describe_context(context) if context is not None else self._latest,
            model=config.model,
            sub_model=state.sub_model,
            backend=sandbox.name,
            backend_reason=self.rlm.backend_reason,
            max_depth=config.max_depth,
            tools=list(self.rlm.tools.names),
            turn=turn,
        )
        latest = describe_context(context) if context is not None else self._latest
        contexts = [*self._contexts, latest] if context is not None else self._contexts
        note = self._note(turn, contexts)
        ready = anyio.Event()

        async def prepare() -> None:
            await self._start_sandbox(stack)
            if context is not None:
                await self._bind_context(stack, context, latest)
            if self.history:
                await sandbox.bind("history", self.history)
            ready.set()

        loop = RootLoop(
            config,
            self._batcher.client,
            sandbox,
            state,
            model=config.model,
            scheduler=self._batcher.scheduler,
            stream=self.rlm.stream,
            children=self._children is not None and self._children.can_spawn(state),
            tools=self.rlm.tools.describe(),
            schema=schema,
            ready=ready.wait,
        )
        # The sandbox starts and takes its context while the first root call is in
        # flight: a container start and a large context cost as much as a model call.
        ending = await beside(prepare, lambda: loop.run(query, latest, note=note))
        events = self._trajectory.events[mark:]
        lost = any(e.get("state_lost") for e in events if e["event"] == "output")
        if lost:
            self.state_lost_turns.append(turn)
            self._lost_since_last_turn = True
        tree = state.tree
        limits = dict(state.refusals)
        status = finished_status(
            forced=ending.forced,
            missing=ending.missing,
            limits=limits,
            stopped=ending.stopped,
            invalid=ending.invalid is not None,
        )
        usage = tree.usage()
        cost = tree.cost_usd() if config.prices else None
        state.event(
            "final",
            answer=ending.answer,
            forced=ending.forced,
            status=status,
            limits=limits,
            stopped=ending.stopped,
            turn=turn,
        )
        costs = tree.cost_by_depth() if config.prices else None
        state.event("usage", **usage.to_dict(), cost_usd=cost, cost_by_depth=costs)
        self.turns = turn
        self.turn_usage.append(usage)
        self.history.append({"query": query, "answer": ending.answer[:_HISTORY_ANSWER]})
        return RLMResult(
            answer=ending.answer,
            iterations=ending.iterations,
            usage=usage,
            wall_time_s=time.monotonic() - started,
            backend=sandbox.name,
            session_id=state.session_id,
            forced=ending.forced,
            trajectory=self._trajectory.events[mark:],
            status=status,
            limits=limits,
            stopped=ending.stopped,
            cost_usd=cost,
            children=tree.children_started,
            value=ending.value,
            turn=turn,
            state_lost=lost,
            invalid_answer=ending.invalid,
        )

    async def _start_sandbox(self, stack: SessionStack) -> None:
        if self._sandbox_started:
            return
        try:
            await stack.start()
        except BaseException:
            # The stack closed itself: this session has no sandbox to go on with.
            await self.aclose()
            raise
        self._sandbox_started = True

    async def _bind_context(self, stack: SessionStack, context: Any, kind: str) -> None:
        """Bind ``context`` (described as ``kind``) as ``context`` and as the next
        ``context_k`` (one copy)."""
        sandbox = stack.sandbox
        await sandbox.load_context(context)
        name = f"context_{len(self._contexts)}"
        result = await sandbox.execute(f"{name} = context", 30.0)
        if result.error:
            raise SandboxError(f"could not bind {name} in the sandbox: {result.error[-300:]}")
        self._latest = kind
        self._contexts.append(kind)

    def _note(self, turn: int, contexts: list[str]) -> str:
        """What the root model is told about the session, past the first turn, once
        ``contexts`` are bound."""
        if turn == 1 and not contexts[:-1] and not self.history:
            return ""
        names = ", ".join(f"`context_{i}` ({kind})" for i, kind in enumerate(contexts))
        lines = [
            f"This is turn {turn} of a session: variables you defined in earlier turns "
            "are still in the REPL.",
        ]
        if names:
            lines.append(f"Contexts: {names}; `context` is the latest.")
        if self.history:
            lines.append(
                f"`history` holds the {len(self.history)} earlier questions and answers "
                '(a list of {"query": ..., "answer": ...}).'
            )
        if self._lost_since_last_turn:
            lines.append(
                "The sandbox had to be restarted in an earlier turn: what was defined "
                "before that is gone, except `context` and what is listed here."
            )
            self._lost_since_last_turn = False
        return " ".join(lines)

    # -- forks and snapshots -------------------------------------------------------------

    async def asnapshot(self) -> bytes:
        """The session's variables (and history) as bytes for :meth:`RLM.arestore`.

        What cannot be carried (functions, modules, objects of classes defined in
        the REPL...) is listed in :attr:`skipped` by name.
        """
        async with self._lock:
            stack = self._open()
            snapshot = await stack.sandbox.snapshot(self.max_snapshot_bytes)
        self.skipped = dict(snapshot.skipped)
        header = json.dumps(
            {"turns": self.turns, "history": self.history, "contexts": self._contexts},
            ensure_ascii=False,
        ).encode("utf-8")
        return MAGIC + b"%d\n" % len(header) + header + snapshot.blob

    async def afork(self, n: int) -> list[RLMSession]:
        """``n`` new sessions whose sandboxes start with a copy of this one's variables."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError("fork(n) takes a positive int")
        blob = await self.asnapshot()
        forks = [
            RLMSession(
                self.rlm,
                idle_timeout=self.idle_timeout,
                max_snapshot_bytes=self.max_snapshot_bytes,
                _restore=blob,
                _portal=self._portal.share() if self._portal is not None else None,
            )
            for _ in range(n)
        ]
        started: list[RLMSession] = []
        try:
            async with anyio.create_task_group() as tg:
                for fork in forks:

                    async def start(fork: RLMSession = fork) -> None:
                        await fork.start()
                        started.append(fork)

                    tg.start_soon(start)
        except BaseException:
            for fork in forks:
                await fork.aclose()
            raise
        return forks

    def _take_header(self, header: dict[str, Any]) -> None:
        turns, history = header.get("turns"), header.get("history")
        contexts = header.get("contexts")
        if (
            not isinstance(turns, int)
            or not isinstance(history, list)
            or not isinstance(contexts, list)
            or not all(isinstance(c, str) for c in contexts)
        ):
            raise SnapshotError("the snapshot's header is damaged; it cannot be restored")
        self.turns, self.history, self._contexts = turns, history, contexts
        if contexts:
            self._latest = contexts[-1]

    # -- the sync API --------------------------------------------------------------------

    def __enter__(self) -> RLMSession:
        if self._portal is None:
            self._portal = _Portal()
        self._portal.call(self.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def completion(
        self, context: Any = None, query: str = "", *, answer_schema: Any = None
    ) -> RLMResult:
        """:meth:`acompletion`, blocking (in a ``with`` block)."""
        return self._sync(lambda: self.acompletion(context, query, answer_schema=answer_schema))

    def fork(self, n: int) -> list[RLMSession]:
        """:meth:`afork`, blocking; each fork is closed with ``close()`` or ``with``."""
        return self._sync(lambda: self.afork(n))

    def snapshot(self) -> bytes:
        """:meth:`asnapshot`, blocking."""
        return self._sync(self.asnapshot)

    def close(self) -> None:
        """:meth:`aclose`, blocking."""
        portal, self._portal = self._portal, None
        if portal is None:
            return
        try:
            portal.call(self.aclose)
        finally:
            portal.release()

    def _sync(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._portal is None:
            raise RuntimeError(
                "this session runs on an event loop: use the async methods "
                "(await acompletion(...)), or open it with `with rlm.session() as s:`"
            )

        async def run() -> T:
            return await call()

        return self._portal.call(run)

    # -- idleness ------------------------------------------------------------------------

    def _open(self) -> SessionStack:
        if self._closed or self._stack is None:
            raise SessionClosed(
                "this session is closed (or was closed after being idle); start a new "
                "one with RLM.session(), or restore a snapshot with RLM.restore(blob)"
            )
        return self._stack

    def _arm_idle(self) -> None:
        if self.idle_timeout is None:
            return
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.idle_timeout, self._went_idle)

    def _disarm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _went_idle(self) -> None:
        if self._lock.locked() or self._closed:
            return
        self._trajectory_note("idle_close")
        self._idle_close = asyncio.get_running_loop().create_task(self.aclose())

    def _trajectory_note(self, why: str) -> None:
        if self._stack is not None:
            self._stack.session.event("session_closed", reason=why, turns=self.turns)


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """A snapshot's host header and its sandbox part; the latter is never read here."""
    if not isinstance(blob, (bytes, bytearray)) or not blob.startswith(MAGIC):
        raise SnapshotError("this is not an rlm session snapshot (it lacks the rlm header)")
    rest = bytes(blob[len(MAGIC) :])
    size, newline, rest = rest.partition(b"\n")
    if not newline or not size.isdigit() or int(size) > MAX_HEADER or int(size) > len(rest):
        raise SnapshotError("the snapshot's header is damaged; it cannot be restored")
    try:
        header = json.loads(rest[: int(size)].decode("utf-8"))
    except (ValueError, RecursionError):
        raise SnapshotError("the snapshot's header is damaged; it cannot be restored") from None
    if not isinstance(header, dict):
        raise SnapshotError("the snapshot's header is damaged; it cannot be restored")
    return header, rest[int(size) :]


class _Portal:
    """An event loop in a thread for the sync API, shared by a session and its forks
    (they share a batcher and its connections, which live on one loop)."""

    def __init__(self) -> None:
        self._cm: AbstractContextManager[anyio.from_thread.BlockingPortal] = (
            anyio.from_thread.start_blocking_portal()
        )
        self._portal = self._cm.__enter__()
        self._users = 1

    def share(self) -> _Portal:
        self._users += 1
        return self

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return self._portal.call(fn)

    def release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._cm.__exit__(None, None, None)
