"""``rlm chat``: a session in the terminal, one question per line.

The sandbox lives as long as the chat: variables a turn defines are there for the
next one. The session's event loop runs in a thread of its own (a blocking portal)
so that the main thread can sit in ``input()`` with readline's line editing, and so
that Ctrl-C, which Python delivers to the main thread, can cancel just the turn in
flight: the main thread asks the loop to cancel the turn's scope and waits for the
sandbox to stop the cell before it shows the prompt again.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlm.cli_common import failure, status_note
from rlm.progress import RunReporter
from rlm.usage import Usage

if TYPE_CHECKING:
    from rlm.core import RLM
    from rlm.result import RLMResult
    from rlm.sessions import RLMSession

T = TypeVar("T")

HELP = """\
commands:
  /fork          fork this branch: a new branch with a copy of its variables, and switch to it
  /branches      list the branches
  /switch N      go on in branch N
  /save FILE     write this branch's snapshot to FILE (rlm chat --restore FILE goes on from it)
  /usage         what this branch used, per turn and by model
  /help          this list
  /quit          close the sandboxes and leave (also Ctrl-D, or Ctrl-C at the prompt)
any other line is a question; Ctrl-C during an answer cancels that turn only"""


@dataclass
class Turn:
    """What one answered turn used, for ``/usage``."""

    number: int
    iterations: int
    usage: Usage
    seconds: float
    cost_usd: float | None


@dataclass
class Branch:
    """One line of the conversation: a session, and the turns that led to it."""

    session: RLMSession
    #: The chat's context is bound by this branch's first turn (not yet answered).
    needs_context: bool
    turns: list[Turn] = field(default_factory=list)
    #: (branch, turn) this one was forked from.
    origin: tuple[int, int] | None = None


class _Cancelled(Exception):
    """The user cancelled the step with Ctrl-C; the chat goes on."""


class Chat:
    """The chat loop over an :class:`~rlm.core.RLM` and a started portal."""

    def __init__(
        self,
        rlm: RLM,
        portal: BlockingPortal,
        *,
        context: Any,
        out: Console,
        err: Console,
        read_line: Callable[[str], str] = input,
    ) -> None:
        self.rlm = rlm
        self.portal = portal
        self.context = context
        self.out = out
        self.err = err
        self.read_line = read_line
        self.branches: list[Branch] = []
        self.current = 0
        #: The reporter of the turn in flight; events arrive on the portal's thread.
        self._reporter: RunReporter | None = None
        self.backend_name = ""
        #: A stop signal (SIGTERM, SIGHUP) that came while a sandbox was starting or
        #: closing: the chat ends once that is done.
        self.pending_stop: KeyboardInterrupt | None = None

    def on_event(self, event: dict[str, Any]) -> None:
        reporter = self._reporter
        # The banner said what a turn's run_start would: the models and the backend.
        kind = event["event"]
        if not event.get("depth") and kind == "run_start":
            return
        if reporter is not None:
            reporter(event)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, restore: bytes | None) -> None:
        """The first branch: a new session, or one restored from a snapshot."""
        rlm = self.rlm

        async def open_session() -> RLMSession:
            if restore is not None:
                return await rlm.arestore(restore, idle_timeout=None)
            # The user is at the keyboard: the sandbox lives as long as the chat.
            return await rlm.session(idle_timeout=None).start()

        session = self._settle(self.portal.start_task_soon(open_session))
        self.branches.append(Branch(session, needs_context=self.context is not None))
        backend = self._settle(self.portal.start_task_soon(rlm.backend))
        self.backend_name = backend.name
        config = rlm.config
        what = "restored a session" if restore is not None else "started a session"
        if restore is not None:
            what += f" at turn {session.turns}"
        self.err.print(
            f"[bold]rlm chat[/]: {what} on [cyan]{backend.name}[/] ({escape(backend.reason)}); "
            f"root {escape(config.model or '')}, sub-model "
            f"{escape(config.effective_sub_model or '')}. /help for commands"
        )

    def close(self) -> None:
        """Close every branch's sandbox; a second Ctrl-C does not cut this short, and
        one that fails to close does not keep the others open."""
        for number, branch in enumerate(self.branches):
            try:
                self._settle(self.portal.start_task_soon(branch.session.aclose))
            except Exception as exc:
                self._report(exc, f"closing branch {number}: ")

    def _settle(self, future: Future[T]) -> T:
        """``future``'s result; interrupts are held until it is there, since what it
        waits for (a sandbox starting or closing) must not be abandoned halfway."""
        while True:
            try:
                return future.result()
            except KeyboardInterrupt as exc:
                if _stops_the_chat(exc):
                    # Held, and raised once the work is done: the chat then ends.
                    self.pending_stop = exc
                self.err.print("[yellow]rlm: a moment, the sandbox is starting or closing[/]")

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Read and answer lines until /quit, EOF or Ctrl-C at the prompt."""
        while True:
            if self.pending_stop is not None:
                raise self.pending_stop
            try:
                line = self.read_line(self._prompt()).strip()
            except EOFError:
                self.err.print("")
                return
            except KeyboardInterrupt as exc:
                if _stops_the_chat(exc):
                    raise
                self.err.print("")
                return
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not self._command(line):
                        return
                else:
                    self._ask(line)
            except _Cancelled:
                self.err.print("[yellow]cancelled; the session goes on[/]")

    def _prompt(self) -> str:
        if len(self.branches) == 1:
            return "rlm> "
        return f"rlm:{self.current}> "

    @property
    def branch(self) -> Branch:
        return self.branches[self.current]

    def _cancellable(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` on the session's loop; Ctrl-C cancels it (raising _Cancelled once
        it has unwound, the sandbox's cell stopped) and a stop signal ends the chat
        after the same unwinding."""
        scopes: list[anyio.CancelScope] = []
        box: list[T] = []

        async def guarded() -> None:
            # Made here: a cancel scope belongs to the loop it runs on.
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                box.append(await fn())

        def cancel() -> None:
            # On the loop's thread, so the task has either entered its scope or not
            # started at all; a cancelled future never starts it.
            if scopes:
                scopes[0].cancel()
            else:
                future.cancel()

        future = self.portal.start_task_soon(guarded)
        stop: KeyboardInterrupt | None = None
        while True:
            try:
                future.result()
                break
            except CancelledError:  # cancelled before it started
                break
            except KeyboardInterrupt as exc:
                if stop is None:
                    self.err.print("[yellow]cancelling...[/]")
                    self.portal.call(cancel)
                stop = stop if stop is not None and _stops_the_chat(stop) else exc
        if stop is not None and _stops_the_chat(stop):
            raise stop
        if not box:
            raise _Cancelled
        return box[0]

    # -- questions ---------------------------------------------------------------------

    def _ask(self, query: str) -> None:
        branch = self.branch
        context = self.context if branch.needs_context else None
        resets = branch.session.sandbox_resets
        with RunReporter(self.err) as reporter:
            self._reporter = reporter
            try:
                result: RLMResult = self._cancellable(
                    lambda: branch.session.acompletion(context, query)
                )
            except _Cancelled:
                if branch.session.sandbox_resets != resets:
                    # A cancelled turn has no result to say so: the sandbox does.
                    self.err.print(
                        "[yellow]the cell could not be stopped cleanly and its sandbox "
                        "was restarted: variables from earlier turns are lost (the "
                        "context is still there)[/]"
                    )
                raise
            except Exception as exc:
                # The session goes on: a provider may be back for the next question.
                self._report(exc, "")
                return
            finally:
                self._reporter = None
        branch.needs_context = False
        branch.turns.append(
            Turn(result.turn, result.iterations, result.usage, result.wall_time_s, result.cost_usd)
        )
        usage = result.usage
        self.err.print(
            f"[bold]turn {result.turn}[/] in {result.wall_time_s:.2f} s: "
            f"{result.iterations} iterations, {usage.sub_calls} sub-calls, "
            f"{usage.total_tokens:,} tokens{status_note(result)}"
        )
        if result.state_lost:
            self.err.print(
                "[yellow]the sandbox had to be restarted during this turn: variables "
                "from earlier turns are lost (the context is still there)[/]"
            )
        self.out.print(result.answer, markup=False, highlight=False)

    def _report(self, exc: Exception, what: str) -> None:
        """Say in one line what went wrong; a bug (an exception no failure kind
        covers) is raised instead, with its traceback."""
        ending = failure(exc)
        if ending is None:
            raise exc
        self.err.print(f"[red]rlm: {escape(what + ending[2])}[/]")

    # -- commands ----------------------------------------------------------------------

    def _command(self, line: str) -> bool:
        """Run a /command; False when the chat should end."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/help":
            self.err.print(HELP, markup=False, highlight=False)
        elif name == "/fork":
            self._fork()
        elif name == "/branches":
            self._list_branches()
        elif name == "/switch":
            self._switch(rest)
        elif name == "/save":
            self._save(rest)
        elif name == "/usage":
            self._usage()
        else:
            self.err.print(f"[yellow]unknown command {escape(name)}; /help lists them[/]")
        return True

    def _fork(self) -> None:
        parent = self.branch
        try:
            (session,) = self._cancellable(lambda: parent.session.afork(1))
        except Exception as exc:
            self._report(exc, "could not fork: ")
            return
        origin = (self.current, parent.session.turns)
        self.branches.append(
            Branch(session, parent.needs_context, list(parent.turns), origin=origin)
        )
        self.current = len(self.branches) - 1
        self.err.print(
            f"forked branch {origin[0]} at turn {origin[1]}: {len(self.branches)} branches; "
            f"now on branch {self.current}"
        )
        self._say_skipped(parent.session, "the fork")

    def _list_branches(self) -> None:
        for number, branch in enumerate(self.branches):
            mark = "*" if number == self.current else " "
            origin = (
                f", forked from branch {branch.origin[0]} at turn {branch.origin[1]}"
                if branch.origin is not None
                else ""
            )
            self.err.print(f"{mark} {number}: {branch.session.turns} turns{origin}")

    def _switch(self, rest: str) -> None:
        if not rest.isdigit() or int(rest) >= len(self.branches):
            self.err.print(
                f"[yellow]/switch takes a branch number, 0 to {len(self.branches) - 1}[/]"
            )
            return
        self.current = int(rest)
        self.err.print(f"now on branch {self.current} ({self.branch.session.turns} turns)")

    def _save(self, rest: str) -> None:
        if not rest:
            self.err.print("[yellow]/save takes a file name[/]")
            return
        session = self.branch.session
        try:
            blob = self._cancellable(session.asnapshot)
        except Exception as exc:
            self._report(exc, "could not save: ")
            return
        path = Path(rest).expanduser()
        try:
            path.write_bytes(blob)
        except OSError as exc:
            self.err.print(f"[red]rlm: could not write {escape(str(path))}: {exc.strerror}[/]")
            return
        self.err.print(
            f"saved branch {self.current} at turn {session.turns} to {escape(str(path))} "
            f"({len(blob):,} bytes); go on from it with rlm chat --restore {escape(str(path))}"
        )
        self._say_skipped(session, "the snapshot")

    def _say_skipped(self, session: RLMSession, what: str) -> None:
        # A name starting with "_" is none the model's code could have made or read
        # (the restricted backend's own helpers show up so).
        skipped = {k: v for k, v in session.skipped.items() if not k.startswith("_")}
        if skipped:
            names = ", ".join(f"{name} ({why})" for name, why in sorted(skipped.items()))
            self.err.print(f"[yellow]{what} could not carry: {escape(names)}[/]")

    def _usage(self) -> None:
        branch = self.branch
        if not branch.turns:
            self.err.print(f"branch {self.current}: no turns yet")
            return
        self.err.print(f"[bold]branch {self.current}[/], per turn:")
        for turn in branch.turns:
            cost = f", ${turn.cost_usd:.4f}" if turn.cost_usd is not None else ""
            self.err.print(
                f"  turn {turn.number}: {turn.iterations} iterations, "
                f"{turn.usage.sub_calls} sub-calls, {turn.usage.total_tokens:,} tokens, "
                f"{turn.seconds:.2f} s{cost}"
            )
        total = Usage.combine((0, turn.usage) for turn in branch.turns)
        table = Table(title=f"branch {self.current}, by model", title_justify="left")
        for column in ("model", "calls", "prompt tokens", "completion tokens", "total tokens"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for model, used in sorted(total.by_model.items()):
            table.add_row(
                escape(model),
                f"{used.calls:,}",
                f"{used.prompt_tokens:,}",
                f"{used.completion_tokens:,}",
                f"{used.total_tokens:,}",
            )
        self.err.print(table)
        costs = [turn.cost_usd for turn in branch.turns]
        cost = f", ${sum(c for c in costs if c is not None):.4f}" if None not in costs else ""
        self.err.print(
            f"all: {len(branch.turns)} turns, {total.sub_calls} sub-calls, "
            f"{total.total_tokens:,} tokens{cost}"
        )


def _stops_the_chat(exc: BaseException) -> bool:
    """SIGTERM and SIGHUP end the chat; Ctrl-C (SIGINT) only cancels a turn."""
    return getattr(exc, "signum", signal.SIGINT) != signal.SIGINT


def run_chat(rlm: RLM, *, context: Any, restore: bytes | None, out: Console, err: Console) -> int:
    """The whole chat: start the first session, answer lines, close every sandbox.

    The chat shows each turn's progress: it becomes ``rlm``'s ``on_event``.
    """
    # input() gains line editing and history; readline is not on every platform.
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401
    with start_blocking_portal() as portal:
        chat = Chat(rlm, portal, context=context, out=out, err=err)
        rlm.on_event = chat.on_event
        try:
            chat.start(restore)
            chat.run()
        finally:
            chat.close()
        if chat.pending_stop is not None:
            raise chat.pending_stop
    err.print("bye")
    return 0
