"""Reading the root model's replies: code cells and the final answer."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A fence opens with ```repl (or ```python, which models write out of habit) on a
# line of its own and closes with ``` on a line of its own.
_BLOCK = re.compile(r"^[ \t]*```(?:repl|python|py)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
_OPEN = re.compile(r"^[ \t]*```(?:repl|python|py)[ \t]*$", re.M)
_FINAL_VAR = re.compile(r"^[ \t]*FINAL_VAR\(\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?\s*\)", re.M)
_FINAL = re.compile(r"^[ \t]*FINAL\((.*)\)[ \t]*$", re.S | re.M)


@dataclass(frozen=True)
class Final:
    """``FINAL(answer)`` (``variable`` is None) or ``FINAL_VAR(variable)``."""

    answer: str | None = None
    variable: str | None = None


@dataclass(frozen=True)
class Reply:
    """What a root reply asks for: cells to run, a final answer, and what was wrong."""

    cells: list[str]
    final: Final | None
    problem: str | None = None


def parse_reply(text: str) -> Reply:
    cells = [m.group(1).rstrip() for m in _BLOCK.finditer(text)]
    cells = [c for c in cells if c.strip()]
    outside = _BLOCK.sub("", text)
    problem = None
    if _OPEN.search(outside):
        problem = "a ```repl block was opened but never closed with ``` on a line of its own"
    return Reply(cells=cells, final=_find_final(outside), problem=problem)


def _find_final(text: str) -> Final | None:
    var = _FINAL_VAR.search(text)
    if var:
        return Final(variable=var.group(1))
    final = _FINAL.search(text)
    if final:
        answer = final.group(1).strip()
        if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "\"'":
            answer = answer[1:-1]
        return Final(answer=answer)
    return None
