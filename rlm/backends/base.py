"""The interface every sandbox backend implements."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

from rlm.bridge import SessionBridge
from rlm.errors import SandboxError, SnapshotError


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


#: The smallest ``max_bytes`` a snapshot may be asked for (its empty frame fits).
MIN_SNAPSHOT_BYTES = 64


@dataclass
class Snapshot:
    """A sandbox's variables, as made by :meth:`Sandbox.snapshot`.

    ``blob`` is opaque to the host: it was written inside the source sandbox and
    is read only inside a target sandbox (:meth:`Sandbox.restore`), never here.
    ``names`` are the variables it carries; ``skipped`` the ones it could not,
    each with why ("a function", "a module", "an object of class Foo", "over the
    size limit"...).
    """

    blob: bytes
    names: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


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
    #: The largest snapshot :meth:`restore` accepts, in bytes.
    snapshot_limit: int = 1 << 30

    def __init__(self, bridge: SessionBridge, *, output_limit: int = 100_000) -> None:
        self.bridge = bridge
        self.output_limit = output_limit
        #: Times the sandbox lost its variables (restarted, or its state replaced):
        #: a session compares it across a turn, a cancelled one included.
        self.resets = 0

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

    async def snapshot(self, max_bytes: int) -> Snapshot:
        """The namespace's variables (``context`` too), at most ``max_bytes`` bytes.

        Only exact built-in values are carried (str, bytes, int, float, bool, None,
        and lists, tuples, dicts, sets and frozensets of them, shared references and
        cycles kept); the names the sandbox injects (``llm_query``, ``FINAL``, the
        tools...) are left out, and every other variable it cannot carry (or that
        would take it over ``max_bytes``) is listed in ``skipped`` with why (past
        1,000 of them, the rest are counted under the key ``"..."``). ValueError
        when ``max_bytes`` is below :data:`MIN_SNAPSHOT_BYTES`.
        """
        raise SandboxError(f"the {self.name} backend cannot take snapshots")

    async def restore(self, blob: bytes) -> list[str]:
        """Bind the variables of a snapshot (of either backend); returns their names.

        All or nothing: a blob that is damaged, forged, of another version, over
        :attr:`snapshot_limit`, or that names a variable which would hide a sandbox
        function or a builtin raises SnapshotError and changes nothing. Variables
        not in the snapshot stay. A restored ``context`` lasts until the sandbox
        restarts, which reloads the one given to :meth:`load_context`.
        """
        raise SandboxError(f"the {self.name} backend cannot restore snapshots")

    @abc.abstractmethod
    async def execute(self, code: str, timeout: float) -> CellResult:
        """Run one cell; never raises for faults of the model's code."""

    @abc.abstractmethod
    async def get_variable(self, name: str) -> str:
        """The variable's value as text. Raises VariableNotFound."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything; safe to call twice."""

    def snapshot_text(self, blob: object) -> str:
        """A snapshot blob as the text the sandbox's reader takes, or SnapshotError:
        it must be bytes, within :attr:`snapshot_limit`, and UTF-8 (the host reads
        nothing more of it)."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise TypeError(f"a snapshot is bytes, not {type(blob).__name__}")
        if len(blob) > self.snapshot_limit:
            raise SnapshotError(
                f"the snapshot is {len(blob):,} bytes, over this sandbox's "
                f"{self.snapshot_limit:,}-byte limit"
            )
        try:
            return bytes(blob).decode("utf-8")
        except UnicodeDecodeError:
            raise SnapshotError("this is not an rlm sandbox snapshot (not UTF-8 text)") from None

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
