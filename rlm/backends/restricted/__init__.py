"""The ``restricted`` backend: cells run in-process under RestrictedPython.

:class:`RestrictedSandbox` (:mod:`.sandbox`) is the backend; the rest is what it is
built from, bottom up:

- :mod:`.stops`, :mod:`.limits` -- how a running cell is ended, and the bounds on
  what one operation may build;
- :mod:`.policy` -- the compile policy; :mod:`.blocked` -- what is never handed to
  model code;
- :mod:`.sizes`, :mod:`.iteration`, :mod:`.methods`, :mod:`.output` -- size checks,
  Python-level loops, checked methods of builtin objects, captured output;
- :mod:`.guards` -- the guard functions rewritten cell code calls; :mod:`.builtins`,
  :mod:`.modules` and :mod:`.module_overrides` -- what model code sees, built on
  them; :mod:`.epoch` -- all of it wired together for one namespace;
- :mod:`.jobs`, :mod:`.memory`, :mod:`.tracebacks`, :mod:`.plain` -- killable
  threads, memory limits, error reports and plain-data copies, for the sandbox;
- :mod:`.process` (host side), :mod:`.spawn`, :mod:`.worker` and :mod:`.confine`
  -- the same sandbox in a confined worker process (``isolation="process"``,
  config ``restricted_isolation``), killed when a cell will not stop.
"""

from __future__ import annotations

from typing import Any

from rlm.backends.base import Sandbox
from rlm.backends.restricted.epoch import new_guards
from rlm.backends.restricted.guards import Guards
from rlm.backends.restricted.modules import ALLOWED_MODULES
from rlm.backends.restricted.sandbox import RestrictedSandbox
from rlm.bridge import SessionBridge

__all__ = [
    "ALLOWED_MODULES",
    "ISOLATIONS",
    "Guards",
    "RestrictedSandbox",
    "make_restricted",
    "new_guards",
]

#: Where the restricted backend runs cells: a worker process, or this process.
ISOLATIONS = ("process", "inprocess")


def make_restricted(
    bridge: SessionBridge, *, isolation: str = "inprocess", **kwargs: Any
) -> Sandbox:
    """A restricted sandbox for ``bridge`` in ``isolation`` mode (see :data:`ISOLATIONS`)."""
    if isolation == "inprocess":
        return RestrictedSandbox(bridge, **kwargs)
    if isolation == "process":
        from rlm.backends.restricted.process import ProcessSandbox

        return ProcessSandbox(bridge, **kwargs)
    raise ValueError(f"unknown restricted isolation {isolation!r}; use one of {ISOLATIONS}")
