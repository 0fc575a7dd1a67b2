"""How a running cell is ended: the exceptions the host raises into its thread.

They derive from ``BaseException``, not ``Exception``: model code may only name
``Exception`` subclasses in an ``except`` clause (see :mod:`.policy`), so it cannot
catch them. Every guard raises the epoch's stop once the host has set it (see
:class:`~.guards.Guards`), and the threads that run cells (:mod:`.jobs`) have them
injected while model code is on their stack.
"""

from __future__ import annotations


class SandboxStop(BaseException):
    """Raised into a cell to end it. Not an ``Exception``: model code cannot catch it."""

    reason = "the cell was stopped"


class CellTimeout(SandboxStop):
    reason = "the cell ran past its time limit and was stopped"


class MemoryLimitExceeded(SandboxStop):
    reason = "MemoryError: the cell used more memory than this sandbox allows and was stopped"
