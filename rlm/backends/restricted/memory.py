"""Memory limits for cells that share the host's process.

Two mechanisms, because neither suffices alone. A watchdog thread
(:data:`WATCHDOG`, one for the process) samples the process's resident memory while a cell runs and
stops the cell with a MemoryError when it has grown by more than the limit; but it
only gets to run between bytecodes, and one C call that allocates gigabytes never
lets it. For that, a process-wide RLIMIT_DATA ceiling (:class:`MemoryCeiling`) is
in force while cells run, so such an allocation fails with MemoryError instead of
waking the OOM killer. Both measure the whole process, so concurrent sessions share
one budget.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from rlm.backends.restricted.jobs import Run
from rlm.backends.restricted.stops import MemoryLimitExceeded

_WATCHDOG_INTERVAL_S = 0.01


def _statm() -> list[bytes] | None:
    """The fields of /proc/self/statm (sizes in pages), or None where it is not there.

    Read with ``pread`` on a descriptor kept open (per process: it is reopened after
    a fork), as this is read at the start and end of every cell.
    """
    global _STATM
    try:
        pid = os.getpid()
        if _STATM is None or _STATM[0] != pid:
            _STATM = (pid, os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
        return os.pread(_STATM[1], 256, 0).split()
    except OSError:
        return None


_STATM: tuple[int, int] | None = None


def _rss_bytes() -> int | None:
    """The process's resident set size, or None where /proc is not available."""
    fields = _statm()
    try:
        return int(fields[1]) * _PAGE_SIZE if fields is not None else None
    except (ValueError, IndexError):
        return None


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


#: Room left for the host's own allocations above a running cell's ceiling.
_CEILING_HEADROOM = 1024**3


def _vm_data_bytes() -> int | None:
    """The process's private writable memory (what RLIMIT_DATA counts), where known.

    statm's data field is VmData plus VmStk (the main thread's stack, which only
    grows, up to RLIMIT_STACK); VmStk is read from /proc/self/status once per
    process, as that file costs ten times the statm read.
    """
    fields = _statm()
    stack = _vm_stack_bytes()
    try:
        return int(fields[5]) * _PAGE_SIZE - stack if fields is not None else None
    except (ValueError, IndexError):
        return None


def _vm_stack_bytes() -> int:
    global _STACK
    pid = os.getpid()
    if _STACK is None or _STACK[0] != pid:
        size = 0
        try:
            with open("/proc/self/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmStk:"):
                        size = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            size = 0
        _STACK = (pid, size)
    return _STACK[1]


_STACK: tuple[int, int] | None = None


class MemoryCeiling:
    """A process-wide RLIMIT_DATA while cells run: the backstop for one huge C call.

    The watchdog can only stop a cell between bytecodes; a single C call such as
    ``list(zip(s, s[1:]))`` on a 100 MB string allocates gigabytes without ever
    returning to Python, and could bring the OOM killer onto the host. With the
    soft limit set to (memory in use now + every running cell's allowance +
    headroom for the host), such an allocation fails with MemoryError instead.
    It is recomputed from current usage whenever a cell starts or ends, and the
    operator's own limit is restored when none runs; it is never raised above it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, int] = {}
        self._original: tuple[int, int] | None = None

    def enter(self, key: int, allowance: int) -> None:
        with self._lock:
            if not self._active:
                self._original = _get_data_limit()
            self._active[key] = allowance
            self._apply()

    def leave(self, key: int) -> None:
        with self._lock:
            if self._active.pop(key, None) is None:
                return
            if self._active:
                self._apply()
            elif self._original is not None:
                _set_data_limit(*self._original)
                self._original = None

    def _apply(self) -> None:
        original, used = self._original, _vm_data_bytes()
        if original is None or used is None:
            return
        soft, hard = original
        ceiling = used + sum(self._active.values()) + _CEILING_HEADROOM
        for bound in (soft, hard):
            if bound != _UNLIMITED:
                ceiling = min(ceiling, bound)
        _set_data_limit(ceiling, hard)


try:
    import resource

    _UNLIMITED = resource.RLIM_INFINITY

    def _get_data_limit() -> tuple[int, int] | None:
        try:
            return resource.getrlimit(resource.RLIMIT_DATA)
        except (OSError, ValueError):
            return None

    def _set_data_limit(soft: int, hard: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))

except ImportError:  # pragma: no cover - not on POSIX: the watchdog alone
    _UNLIMITED = -1

    def _get_data_limit() -> tuple[int, int] | None:
        return None

    def _set_data_limit(soft: int, hard: int) -> None:
        return None


#: The one ceiling: RLIMIT_DATA is the process's, shared by every session's cells.
CEILING = MemoryCeiling()


class Watchdog:
    """Stops each watched job with a MemoryError when the process grows past its limit.

    One thread for the whole process, asleep while no job runs: starting a thread
    per cell cost more than the rest of a trivial cell. Each job is measured against
    the resident memory when it started, every 10 ms while it runs, and stopped (the
    stop injected again at each look) for as long as it is over.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._jobs: dict[Run, tuple[int, int]] = {}
        self._thread: threading.Thread | None = None

    def watch(self, job: Run, limit: int) -> None:
        baseline = _rss_bytes()
        if baseline is None:
            return
        with self._lock:
            self._jobs[job] = (baseline, limit)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="rlm-restricted-watchdog", daemon=True
                )
                self._thread.start()
            self._lock.notify()

    def unwatch(self, job: Run) -> None:
        with self._lock:
            self._jobs.pop(job, None)

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    self._lock.wait()
            time.sleep(_WATCHDOG_INTERVAL_S)
            # In a call of its own, so that no job outlives the sample in a local
            # variable: asleep, the thread held the last job it looked at, and with it
            # that job's sandbox, which a sandbox dropped without close needs gone.
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            jobs = list(self._jobs.items())
        if not jobs:
            return
        rss = _rss_bytes()
        if rss is None:
            return
        for job, (baseline, limit) in jobs:
            if rss - baseline > limit and not job.over:
                job.request_stop(MemoryLimitExceeded)


#: The one watchdog thread, shared by every session's jobs.
WATCHDOG = Watchdog()
