"""Tracebacks of model code: what a failed cell reports, as Python would print it.

The cell runs inside host code, so a raw traceback would show the host's frames and
paths. Only the frames of the session's own cells are shown (with their source
lines), the exception's message is made by the guards (a huge or hostile
``__str__`` is refused like any conversion to text) and capped, and a cell the
compile policy refused is described as such.
"""

from __future__ import annotations

from types import FrameType, TracebackType

from rlm.backends.restricted.guards import Guards
from rlm.backends.restricted.stops import SandboxStop

_MAX_TRACEBACK_FRAMES = 30


def format_error(
    exc: BaseException, guards: Guards, sources: dict[str, list[str]], limit: int
) -> str:
    """A traceback of the cell's own frames, as Python would print it.

    ``sources`` holds each cell's lines by its filename (``<cell N>``): frames of
    other files are left out. The exception's message is cut at ``limit`` characters.
    """
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    chain: list[tuple[BaseException, str | None]] = []
    while current is not None and id(current) not in seen and len(chain) < 5:
        seen.add(id(current))
        if current.__cause__ is not None:
            chain.append(
                (
                    current,
                    "The above exception was the direct cause of the following exception:",
                )
            )
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            chain.append(
                (current, "During handling of the above exception, another exception occurred:")
            )
            current = current.__context__
        else:
            chain.append((current, None))
            current = None
    for index, (item, _link) in enumerate(reversed(chain)):
        if index:
            parts.append("\n" + (chain[len(chain) - index][1] or "") + "\n\n")
        parts.append(_format_one(item, guards, sources, limit))
    return "".join(parts).rstrip()


def _format_one(
    exc: BaseException, guards: Guards, sources: dict[str, list[str]], limit: int
) -> str:
    frames = [
        (filename, lineno, frame.f_code.co_name)
        for frame, lineno in _walk_tb(exc.__traceback__)
        if (filename := frame.f_code.co_filename) in sources
    ]
    lines: list[str] = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(_frame_lines(frames, sources))
    lines.append(_exception_line(exc, guards, limit))
    return "".join(lines)


def _frame_lines(frames: list[tuple[str, int, str]], sources: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    omitted = max(0, len(frames) - _MAX_TRACEBACK_FRAMES)
    if omitted:
        frames = frames[:5] + frames[-(_MAX_TRACEBACK_FRAMES - 5) :]
    previous: tuple[str, int, str] | None = None
    repeats = 0
    for i, frame in enumerate(frames):
        if omitted and i == 5:
            out.append(f"  [... {omitted} more frames ...]\n")
        if frame == previous:
            repeats += 1
            if repeats >= 3:
                continue
        else:
            if repeats >= 3:
                out.append(f"  [Previous line repeated {repeats - 2} more times]\n")
            repeats = 0
        previous = frame
        filename, lineno, name = frame
        out.append(f'  File "{filename}", line {lineno}, in {name}\n')
        source = sources.get(filename, [])
        if 0 < lineno <= len(source):
            out.append(f"    {source[lineno - 1].strip()[:300]}\n")
    if repeats >= 3:
        out.append(f"  [Previous line repeated {repeats - 2} more times]\n")
    return out


def _walk_tb(tb: TracebackType | None) -> list[tuple[FrameType, int]]:
    out: list[tuple[FrameType, int]] = []
    while tb is not None and len(out) < 100_000:
        out.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    return out


def _exception_line(exc: BaseException, guards: Guards, limit: int) -> str:
    name = type(exc).__name__
    try:
        if isinstance(exc, KeyError) and len(exc.args) == 1:
            message = guards.repr(exc.args[0])  # as Python shows it: KeyError: 'k'
        elif len(exc.args) == 1 and isinstance(exc.args[0], str):
            message = exc.args[0]
        elif not exc.args:
            message = ""
        else:
            message = guards.to_str(exc)
    except SandboxStop:
        raise
    except Exception:  # too big, or broken, to show
        message = "<the exception's message could not be shown>"
    if isinstance(message, str) and type(message) is not str:
        message = str.__getitem__(message, slice(None))
    if len(message) > limit:
        message = f"{message[:limit]}... [message truncated]"
    return f"{name}: {message}\n" if message else f"{name}\n"


def describe_rejection(errors: str) -> str:
    if "SyntaxError" in errors or "IndentationError" in errors:
        return errors
    return "the sandbox refused this cell:\n" + errors
