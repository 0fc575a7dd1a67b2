"""Stop signals, handled like Ctrl-C: the run is cancelled, cleaned up, then reported.

SIGINT (the terminal), SIGTERM (what ``timeout``, systemd, ``docker stop`` and
Kubernetes send) and SIGHUP (a closed terminal) all end a command the same way:
:class:`Interrupted`, which the CLI turns into one line and the exit code a shell
expects of that signal (128 + its number).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

#: What stops a run the way Ctrl-C does: the terminal, and what `timeout`, systemd,
#: `docker stop` and Kubernetes send (SIGTERM), or a closed terminal (SIGHUP).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``during_run`` when a run was cancelled and cleaned up."""

    def __init__(self, signum: int, *, during_run: bool = False) -> None:
        super().__init__(signum)
        self.signum = signum
        self.during_run = during_run


def _catchable() -> list[signal.Signals]:
    """The stop signals this process may take over: not ignored (``nohup``), main thread."""
    if threading.current_thread() is not threading.main_thread():
        return []
    return [s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Outside a run, SIGTERM and SIGHUP raise :class:`Interrupted`, as SIGINT raises
    KeyboardInterrupt, so every stop ends in the same one line and exit code."""

    def stop(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    saved = {s: signal.getsignal(s) for s in _catchable() if s != signal.SIGINT}
    for sig in saved:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


async def interruptible(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)``; a stop signal cancels it and raises :class:`Interrupted` after.

    The signal is taken by the event loop, not raised into whatever code is running:
    the cancellation reaches ``fn``'s ``finally`` blocks, whose shielded clean-up
    (the sandbox closed, the container removed) runs to its end, and a trajectory
    line is never cut in half. Signals that arrive during the clean-up are held by
    the receiver, so a second Ctrl-C or SIGTERM cannot cut it short.
    """
    signals = _catchable()
    if not signals:
        return await fn(*args)
    saved = {s: signal.getsignal(s) for s in signals}
    caught: list[int] = []
    results: list[T] = []
    errors: list[Exception] = []
    work = anyio.CancelScope()
    try:
        with anyio.open_signal_receiver(*signals) as received:

            async def watch() -> None:
                async for signum in received:
                    caught.append(signum)
                    if len(caught) == 1:
                        work.cancel()
                    elif len(caught) == 2:
                        sys.stderr.write("rlm: still closing the sandbox, a moment\n")

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(watch)
                with work:
                    try:
                        results.append(await fn(*args))
                    except Exception as exc:  # raised below, outside the task group
                        errors.append(exc)
                tasks.cancel_scope.cancel()
    finally:
        # The loop resets what it took over to the default (death by signal), not to
        # what was there before.
        for sig, handler in saved.items():
            if handler is not None:  # None: set outside Python, so not ours to restore
                signal.signal(sig, handler)
    if caught:
        raise Interrupted(caught[0], during_run=True)
    if errors:
        raise errors[0]
    return results[0]
