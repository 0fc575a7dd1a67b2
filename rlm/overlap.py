"""Work that runs beside the work that needs it: :func:`beside`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def beside(prepare: Callable[[], Awaitable[None]], body: Callable[[], Awaitable[T]]) -> T:
    """``body()``'s result, run while ``prepare()`` runs.

    ``prepare`` failing cancels ``body`` and its error is raised. ``body`` failing
    waits for ``prepare`` to finish first, so that a failed model call leaves the
    session's sandbox whole (started, its context bound) for the next turn; only a
    cancellation stops both at once, as it would have stopped them one after another.
    """
    outcome: list[T] = []
    failure: list[Exception] = []

    async def run_prepare() -> None:
        await prepare()

    async def run_body() -> None:
        try:
            outcome.append(await body())
        except Exception as exc:
            failure.append(exc)

    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run_prepare)
            group.start_soon(run_body)
    except BaseExceptionGroup as errors:
        error = _first(errors)
    if error is not None:
        # Raised out here, the error keeps its own cause and is not chained to the group.
        raise error
    if failure:
        raise failure[0]
    return outcome[0]


def _first(errors: BaseExceptionGroup) -> BaseException:
    """The error a task group's group stands for: the first that is not a cancellation."""
    flat: list[BaseException] = []
    pending: list[BaseException] = [errors]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = error.exceptions
        else:
            flat.append(error)
    cancelled = anyio.get_cancelled_exc_class()
    return next((e for e in flat if not isinstance(e, cancelled)), flat[0])
