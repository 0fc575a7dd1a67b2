"""Host tools: the user's own functions, callable from model code across the bridge.

``RLM(tools=[search, fetch])`` gives model code a ``search`` and a ``fetch`` of the
same names, signatures and docstrings (built in the sandbox by
:mod:`rlm_sandbox.tools` from :meth:`ToolSet.specs`). A call crosses the bridge as
a ``tool`` request whose name and arguments come straight from the untrusted side,
so :meth:`ToolSet.call` takes nothing on trust:

- the tool must exist; the arguments must be a JSON object within a size bound,
  with every required parameter, no unknown one, and each value of the type its
  hint names (``str``, ``int``, ``float``, ``bool``, ``None``, ``list[X]``,
  ``dict[str, X]``, unions, ``Literal[...]``, ``Any``). Anything else is a
  :class:`~rlm.errors.BridgeRefusal` (``RLMCallError`` in model code);
- each tool has a call limit per run (:class:`~rlm.errors.BudgetExceeded`) and a
  timeout per call;
- what comes back is copied into plain JSON and bounded, so no host object ever
  crosses; a tool that raised, ran out of time or returned something that is not
  JSON comes back as an error message (``ToolError`` in model code) with the
  traceback kept on the host, in the log.

Synchronous tools run on a worker thread. Python cannot stop a thread, so a sync
tool that overruns its timeout is *abandoned*, not stopped: the call answers with
a timeout error at once, and the thread runs on until the function returns (its
result is then dropped). Tools that may block for long should bound their own
waits (pass a timeout to the HTTP client, the database) or be ``async def``, which
are cancelled at the timeout.
"""

from rlm.tools.tool import RESERVED_NAMES, Tool, tool
from rlm.tools.toolset import (
    DEFAULT_MAX_ARGUMENT_BYTES,
    DEFAULT_MAX_RESULT_BYTES,
    MAX_ERROR_CHARS,
    TOOL_THREADS,
    Tools,
    ToolSet,
)

__all__ = [
    "DEFAULT_MAX_ARGUMENT_BYTES",
    "DEFAULT_MAX_RESULT_BYTES",
    "MAX_ERROR_CHARS",
    "RESERVED_NAMES",
    "TOOL_THREADS",
    "Tool",
    "ToolSet",
    "Tools",
    "tool",
]
