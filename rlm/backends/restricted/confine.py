"""The OS boundary around a restricted worker process: resource limits and seccomp.

Applied by the worker to itself (:mod:`.worker`) before it reads anything from the
host, so no model code ever runs outside them:

- ``RLIMIT_AS`` (address space), ``RLIMIT_CPU`` (CPU seconds over the worker's
  life: past it the kernel ends it with SIGXCPU), ``RLIMIT_NOFILE`` (descriptors)
  and ``RLIMIT_NPROC`` (tasks of the user; the kernel does not apply it to root,
  which is why process creation is also refused by seccomp), soft and hard alike,
  so the worker cannot raise them again (root could: seccomp refuses
  ``setrlimit`` and a ``prlimit64`` that sets a limit).
- A seccomp filter, where a maintained binding of libseccomp can be imported
  (``seccomp``, libseccomp's own, Debian's ``python3-seccomp``; or ``pyseccomp``
  from PyPI, the same API over ctypes). It never hand-writes BPF. Everything not
  listed is allowed; these fail with EPERM: new processes and programs
  (``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD``, ``execve``), new
  sockets (``socket``: only the socketpair asyncio makes for itself remains),
  signals to other processes, tracing and other processes' memory, writing
  files (``open``/``openat`` with write or create flags, ``creat``, ``unlink``,
  ``rename``, ``mkdir``, ``chmod``, ``chown``, ``link``, ``symlink``,
  ``truncate``), mounts, namespaces, ``chroot``, kernel modules, ``bpf``,
  ``perf_event_open``, ``keyctl``, ``userfaultfd``, ``personality``, ``reboot``,
  ``swapon``, and raising resource limits. ``clone3`` and ``openat2`` answer
  ENOSYS, so the C library falls back to ``clone``/``openat``, which are checked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from dataclasses import asdict, dataclass
from typing import Any

#: Room above the memory limit in the address-space limit: the interpreter, its
#: libraries, thread stacks and malloc arenas reserve address space they never use.
AS_HEADROOM = 1024**3
CLONE_THREAD = 0x00010000

_DENY = (
    "fork",
    "vfork",
    "execve",
    "execveat",
    "socket",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_open",
    "pidfd_getfd",
    "pidfd_send_signal",
    "tkill",
    "creat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "mkdir",
    "mkdirat",
    "rmdir",
    "chmod",
    "fchmod",
    "fchmodat",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "truncate",
    "mknod",
    "mknodat",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "personality",
    "reboot",
    "swapon",
    "swapoff",
    "setrlimit",
    "acct",
    "settimeofday",
    "clock_settime",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
    "quotactl",
    "name_to_handle_at",
    "open_by_handle_at",
    "fanotify_init",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "capset",
)
_NOT_THERE = ("clone3", "openat2", "io_uring_setup")


@dataclass(frozen=True)
class Limits:
    """What the host asks the worker to hold itself to (sent as its argument)."""

    memory_bytes: int
    cpu_seconds: int = 3600
    open_files: int = 64
    #: Tasks the worker may add to its user's count (threads count as tasks).
    tasks: int = 64
    seccomp: bool = True
    #: Not a limit: how long the worker's soft stop waits before it gives a thread up.
    stop_grace_s: float = 2.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Confinement:
    """What was applied (the worker reports it in its hello, the host keeps it)."""

    rlimits: dict[str, int]
    seccomp: str | None  # the binding used, or None
    seccomp_problem: str | None = None


def seccomp_binding() -> Any:
    """libseccomp's Python binding where one can be imported, else None."""
    for name in ("seccomp", "pyseccomp"):
        try:
            module = __import__(name)
        except Exception:  # missing, or the C library is not there
            continue
        if hasattr(module, "SyscallFilter"):
            return module
    return None


def apply(limits: Limits) -> Confinement:
    """Apply ``limits`` to this process, then (when asked and possible) seccomp."""
    applied = {
        "RLIMIT_AS": _set(resource.RLIMIT_AS, limits.memory_bytes + AS_HEADROOM),
        "RLIMIT_CPU": _set(resource.RLIMIT_CPU, limits.cpu_seconds),
        "RLIMIT_NOFILE": _set(resource.RLIMIT_NOFILE, limits.open_files),
        "RLIMIT_NPROC": _set(resource.RLIMIT_NPROC, _user_tasks() + limits.tasks),
    }
    if not limits.seccomp:
        return Confinement(applied, None, "not asked for")
    binding = seccomp_binding()
    if binding is None:
        return Confinement(applied, None, "no seccomp binding (seccomp or pyseccomp) here")
    try:
        _load_filter(binding)
    except Exception as exc:
        return Confinement(applied, None, f"{type(exc).__name__}: {exc}"[:200])
    return Confinement(applied, binding.__name__)


def _set(which: int, value: int) -> int:
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))
    return value


def _user_tasks() -> int:
    """Tasks (threads) the kernel counts against this user's RLIMIT_NPROC now."""
    uid = os.getuid()
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 4096
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                owner = threads = None
                for line in f:
                    if line.startswith(b"Uid:"):
                        owner = int(line.split()[1])
                    elif line.startswith(b"Threads:"):
                        threads = int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue
        if owner == uid and threads:
            total += threads
    return total


def _load_filter(sc: Any) -> None:
    eperm = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in _DENY:
        _rule(f, eperm, name)
    for name in _NOT_THERE:
        _rule(f, sc.ERRNO(errno.ENOSYS), name)
    # Threads only: a clone without CLONE_THREAD is a new process.
    _rule(f, eperm, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    # Signals to this process only.
    pid = os.getpid()
    _rule(f, eperm, "kill", sc.Arg(0, sc.NE, pid))
    _rule(f, eperm, "tgkill", sc.Arg(0, sc.NE, pid))
    # Reading limits stays possible (getrlimit is prlimit64 with no new limit).
    _rule(f, eperm, "prlimit64", sc.Arg(2, sc.NE, 0))
    # Files open for reading only.
    for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC):
        _rule(f, eperm, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
        _rule(f, eperm, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
    f.load()


def _rule(f: Any, action: Any, name: str, *args: Any) -> None:
    with contextlib.suppress(RuntimeError, ValueError, OSError):  # not on this architecture
        f.add_rule(action, name, *args)
