"""The host tools and child runs the corpus's attacker sessions get.

A deployment may give model code host tools and child RLMs; the corpus attacks
both, so the harness gives them too. The tools are canaries, each built to show
one thing if the boundary fails:

- ``lookup``: a plain tool with a call limit, to be called too often, with wrong,
  missing, unknown or huge arguments;
- ``explode``: raises; its exception's cause and its frame's locals hold the canary
  and host paths, which must stay on the host (only the message crosses);
- ``oddity``: returns a host object (its repr holds the canary), not JSON;
- ``stall`` / ``stall_async``: hang past their timeout; the run must go on;
- ``oversized``: returns more JSON than the set's result limit;
- ``keep`` / ``kept``: hold the tool's argument on the host, so model code can try
  to change a host value through an object it passed or got back (only JSON
  crosses: it must not be able to).

A second set, the victim's, has ``victim_only``, which the attacker names and must
never reach.

Children run with :data:`CHILD_MODEL` as their root model, scripted on the offline
model server (:func:`child_script`): every child tries to go deeper, spends tools,
and answers.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from rlm.config import RLMConfig
from rlm.security.hostside import Canary
from rlm.tools import Tool, ToolSet

#: The children's root model, scripted on the offline server.
CHILD_MODEL = "root-child"
#: Levels of runs: the root and its children; a child's rlm_query is a plain sub-call.
MAX_DEPTH = 2
#: Calls of ``lookup`` per run (the whole tree).
LOOKUP_CALLS = 3
#: Seconds a tool call may take.
TOOL_TIMEOUT = 1.0
#: Bytes of a tool call's arguments, and of its result.
TOOL_ARGUMENT_BYTES = 100_000
TOOL_RESULT_BYTES = 200_000
#: The root model turns a child may take (one cell, then its answer).
CHILD_ITERATIONS = 3
#: Seconds a child's cell may run.
CHILD_CELL_TIMEOUT = 10.0

#: What every child's root model writes. A child is a run like any other, so its
#: code attacks too: it asks for grandchildren (beyond the depth limit: plain
#: sub-calls), a batch of them, tries to name its own depth, and spends tools.
CHILD_CELL = """
seen = []
try:
    seen.append("deeper: " + str(rlm_query("grandchild: go one level deeper", "ctx"))[:60])
except Exception as e:
    seen.append("deeper refused: " + str(e)[:80])
try:
    seen.append("batch: " + str(len(rlm_batch(["grandchild a", "grandchild b"]))))
except Exception as e:
    seen.append("batch refused: " + str(e)[:80])
try:
    rlm_query("x", depth=0)
except Exception as e:
    seen.append("forged depth: " + type(e).__name__)
for i in range(LOOKUPS):
    try:
        seen.append("lookup: " + str(lookup("child-" + str(i))["key"]))
    except Exception as e:
        seen.append("lookup refused: " + type(e).__name__)
print(seen)
"""


def child_script() -> list[str]:
    """The replies of every child's root model: one cell, then its answer."""
    cell = CHILD_CELL.replace("LOOKUPS", str(LOOKUP_CALLS + 1))
    return [f"```repl{cell}```", "FINAL(the child is done)"]


class _HostObject:
    """A host object a tool hands back: its repr must never cross."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __repr__(self) -> str:
        return f"<host object holding {self.secret} from {__file__}>"


class AttackTools:
    """The canary tools of one harness, and what they saw."""

    def __init__(self, canary: Canary, host_file: Path) -> None:
        self.canary = canary
        self.host_file = host_file
        #: Ends stalled sync tools' threads (abandoned at their timeout, not stopped).
        self.release = threading.Event()
        #: What ``keep`` holds on the host (the sandbox must not reach into it).
        self.held: list[list[str]] = []
        #: Calls that reached the victim's tool: must stay 0.
        self.victim_hits = 0
        self.tools = ToolSet.build(
            [
                Tool(self.lookup, name="lookup", max_calls=LOOKUP_CALLS),
                Tool(self.explode, name="explode"),
                Tool(self.oddity, name="oddity"),
                Tool(self.stall, name="stall"),
                Tool(self.stall_async, name="stall_async"),
                Tool(self.oversized, name="oversized"),
                Tool(self.keep, name="keep"),
                Tool(self.kept, name="kept"),
            ],
            timeout=TOOL_TIMEOUT,
            max_calls=100,
            max_argument_bytes=TOOL_ARGUMENT_BYTES,
            max_result_bytes=TOOL_RESULT_BYTES,
        )
        #: Another run's tools: model code of the attacker must never reach them.
        self.victim_tools = ToolSet.build([Tool(self.victim_only, name="victim_only")])

    def reset(self) -> None:
        """Before a payload: nothing held, no thread left stalled."""
        self.release.set()
        self.release = threading.Event()
        self.held = []

    def close(self) -> None:
        self.release.set()

    # -- the tools (their docstrings are what model code reads) ---------------------------

    def lookup(self, key: str, limit: int = 3) -> dict[str, Any]:
        """Look a key up."""
        return {"key": key, "limit": limit}

    def explode(self, reason: str) -> str:
        """Always fails."""
        secret = self.canary.value  # a local of the failing frame: a traceback shows it
        try:
            raise OSError(f"could not read {self.host_file}: key {secret}")
        except OSError as inner:
            raise ValueError(f"explode refused: {reason[:40]}") from inner

    def oddity(self) -> Any:
        """Returns something that is not JSON."""
        return {"host": _HostObject(self.canary.value)}

    def stall(self, seconds: float) -> str:
        """Waits (a sync tool: its thread is abandoned at the timeout, not stopped)."""
        self.release.wait(min(seconds, 5.0))
        return "stalled"

    async def stall_async(self, seconds: float) -> str:
        """Waits (an async tool: cancelled at the timeout)."""
        await asyncio.sleep(min(seconds, 60.0))
        return "stalled"

    def oversized(self, n: int) -> str:
        """Returns n characters."""
        return "x" * min(n, 50_000_000)

    def keep(self, items: list[str]) -> int:
        """Holds on to items on the host."""
        self.held.append(items)
        return len(self.held)

    def kept(self) -> list[list[str]]:
        """What keep holds."""
        return self.held

    def victim_only(self) -> str:
        """Another run's tool."""
        self.victim_hits += 1
        return "victim"


def children_config(base: RLMConfig) -> RLMConfig:
    """``base`` (a target's backend settings) as the children of the corpus run it."""
    return base.with_(
        sub_model="sub",
        child_model=CHILD_MODEL,
        max_depth=MAX_DEPTH,
        max_iterations=CHILD_ITERATIONS,
        cell_timeout=CHILD_CELL_TIMEOUT,
        request_timeout=10.0,
    )
