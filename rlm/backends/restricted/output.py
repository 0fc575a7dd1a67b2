"""Output capture: what a cell prints is kept, up to a limit, for the cell's result.

Model code never writes to the host's stdout. RestrictedPython turns ``print`` into
calls on the object ``_print_(_getattr_)`` returns (:class:`PrintHandle`); it formats
through the guards, so printing a huge value is refused like any other conversion to
text, and it writes into the epoch's :class:`OutputSink`, which drops what is over
the limit (counting it, so the result can say how much went).
"""

from __future__ import annotations

from typing import Any, Protocol


class OutputSink:
    """One cell's captured print output, capped at ``limit`` characters."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    @property
    def full(self) -> bool:
        return self.size >= self.limit

    def write(self, text: str) -> None:
        room = self.limit - self.size
        if len(text) <= room:
            self.parts.append(text)
            self.size += len(text)
            return
        if room > 0:
            self.parts.append(text[:room])
            self.size = self.limit
        self.dropped += len(text) - max(room, 0)

    def text(self) -> str:
        # Lone surrogates ('\ud800') would break whoever writes this out as UTF-8.
        return "".join(self.parts).encode("utf-8", "replace").decode("utf-8")


class Printer(Protocol):
    """What printing needs of the guards (:class:`~.guards.Guards` is one)."""

    output: OutputSink

    def check(self) -> None: ...

    def getattr(self, obj: Any, name: Any, *default: Any) -> Any: ...

    def to_str(self, obj: Any) -> str: ...


class PrintHandle:
    """What RestrictedPython's ``_print_(_getattr_)`` returns in each scope."""

    __slots__ = ("_guards",)

    def __init__(self, guards: Printer) -> None:
        self._guards = guards

    def __call__(self) -> str:  # the ``printed`` name
        return self._guards.output.text()

    def _call_print(
        self, *objects: Any, sep: Any = " ", end: Any = "\n", file: Any = None, flush: Any = False
    ) -> None:
        guards = self._guards
        guards.check()
        sep = " " if sep is None else sep
        end = "\n" if end is None else end
        if not isinstance(sep, str) or not isinstance(end, str):
            raise TypeError("print(): sep and end must be str or None")
        if file is not None:
            write = guards.getattr(file, "write")
            write(guards.to_str(sep).join(guards.to_str(o) for o in objects) + end)
            return
        sink = guards.output
        if sink.full:
            sink.dropped += 1  # nothing more is kept: skip the work of formatting
            return
        sink.write(str.join(sep, [guards.to_str(o) for o in objects]) + str.__str__(end))
