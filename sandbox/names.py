"""Which names the host may bind, or a snapshot restore, in a sandbox's namespace.

A bound value or a restored variable must never take the place of what the
sandbox itself gives model code (``llm_query``, ``FINAL``, the host tools...) or
of a Python builtin, and must be a name model code can read on both backends (an
identifier, not a keyword, not starting with ``_``: the restricted backend forbids
those names in cells).
"""

from __future__ import annotations

import builtins
import keyword
from collections.abc import Iterable

#: What every namespace defines for model code (``api.make_functions``, ``final``).
SANDBOX_NAMES = frozenset(
    {
        "llm_query",
        "llm_batch",
        "llm_batch_iter",
        "rlm_query",
        "rlm_batch",
        "rlm_batch_iter",
        "LLMError",
        "RLMCallError",
        "ToolError",
        "FINAL",
        "FINAL_VAR",
    }
)
_BUILTINS = frozenset(dir(builtins))
#: The longest name accepted.
MAX_NAME = 200


def name_problem(name: object, tools: Iterable[str] = (), *, context: bool = False) -> str | None:
    """Why ``name`` cannot be bound (None when it can); ``context`` allows ``context``."""
    if type(name) is not str:
        return f"a name must be a str, not {type(name).__name__}"
    shown = repr(name[:MAX_NAME])
    if len(name) > MAX_NAME or not name.isidentifier() or keyword.iskeyword(name):
        return f"{shown} is not a Python identifier"
    if name.startswith("_"):
        return f"{shown} starts with '_'; model code cannot read such names"
    if name in SANDBOX_NAMES or name in tools:
        return f"{shown} is a function the sandbox gives model code"
    if name in _BUILTINS:
        return f"{shown} would hide the Python builtin of that name"
    if name == "context" and not context:
        return "'context' is bound with load_context"
    return None
