"""The interface every sandbox backend implements."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from rlm.bridge import SessionBridge
from rlm.errors import SandboxError


@dataclass
class CellResult:
    """What running one cell produced.

    ``error`` is the formatted exception (traceback for model code, or the reason the
    cell was stopped) and ``None`` when the cell ran to the end. ``state_lost`` says
    the sandbox had to be restarted: every variable except ``context`` is gone.

    ``final`` is the answer the cell gave with ``FINAL(value)``, ``FINAL_VAR(name)``
    or ``answer = {"content": ..., "ready": True}``:
    ``{"value": <JSON>, "how": "FINAL" | "FINAL_VAR" | "answer"}``, plus
    ``"converted": True`` when the value was not JSON and is carried as its
    ``str()``. It is made of plain JSON types only, and its JSON text is at most
    :attr:`Sandbox.value_limit` characters.
    """

    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    timed_out: bool = False
    duration_s: float = 0.0
    state_lost: bool = False
    truncated: bool = False
    final: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sandbox(abc.ABC):
    """One session's isolated interpreter with a persistent namespace.

    The namespace holds ``context``, ``llm_query``, ``llm_batch``, ``LLMError`` and
    whatever cells define. Sub-calls go to ``bridge``, which is bound to the session on
    the host side: nothing the sandbox sends can change whose session it is.
    """

    #: Short name shown to users ("restricted", "docker:runc", ...).
    name: str = "sandbox"
    #: Bound on a final value's compact JSON text, in characters.
    value_limit: int = 8_000_000

    def __init__(self, bridge: SessionBridge, *, output_limit: int = 100_000) -> None:
        self.bridge = bridge
        self.output_limit = output_limit

    @abc.abstractmethod
    async def start(self) -> None:
        """Get ready to run cells. Raises SandboxUnavailable with what to do."""

    @abc.abstractmethod
    async def load_context(self, context: Any) -> None:
        """Bind ``context`` in the namespace (str, list or JSON-able dict)."""

    async def bind(self, name: str, value: Any) -> None:
        """Bind a JSON value under ``name`` (a copy; see :mod:`rlm.backends.values`).

        ``name`` is an identifier that does not start with ``_`` and is not
        ``context`` (see :meth:`load_context`), a function the sandbox gives model
        code (``llm_query``, ``FINAL``, a tool...) or a Python builtin: ValueError.
        A value that is not plain JSON (str keys, finite floats, 100 levels at
        most): TypeError. A restarted sandbox (``state_lost``) has lost it.
        """
        raise SandboxError(f"the {self.name} backend cannot bind values")

    @abc.abstractmethod
    async def execute(self, code: str, timeout: float) -> CellResult:
        """Run one cell; never raises for faults of the model's code."""

    @abc.abstractmethod
    async def get_variable(self, name: str) -> str:
        """The variable's value as text. Raises VariableNotFound."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything; safe to call twice."""

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
