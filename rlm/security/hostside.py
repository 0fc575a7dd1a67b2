"""What the harness sets up on the host for payloads to aim at, and watches.

- a **canary** secret, put in the host environment and used as the model client's
  API key, that must never show up anywhere the sandbox can write;
- **listeners** on the host's loopback (TCP on 127.0.0.1 and ::1, UDP on 127.0.0.1,
  a Unix socket in a host directory) that count every connection and datagram: a
  payload must never reach one;
- a **host directory** holding a secret file (the canary) and a path payloads try
  to create (it must never exist);
- a snapshot of the host **process** (RSS, threads, descriptors) to show it is
  unharmed after the corpus ran.

Traffic only ever goes to loopback: the listeners bind 127.0.0.1 and ::1 and
nothing else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import secrets
import selectors
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Canary:
    """A secret that must never cross into the sandbox."""

    value: str
    env_name: str = "RLM_SECURITY_CANARY"

    @classmethod
    def new(cls) -> Canary:
        return cls("rlmcanary-" + secrets.token_hex(16))

    def found_in(self, text: str) -> bool:
        # The random tail alone is enough to recognise a partial or re-prefixed copy.
        return self.value in text or self.value[-24:] in text

    #: Where the canary goes in the host environment: its own name, and the name an
    #: OpenAI-compatible client reads its key from.
    def env_names(self) -> tuple[str, ...]:
        return (self.env_name, "OPENAI_API_KEY")

    def export(self) -> dict[str, str | None]:
        """Put the canary in the host environment; returns what to restore."""
        saved = {name: os.environ.get(name) for name in self.env_names()}
        for name in self.env_names():
            os.environ[name] = self.value
        return saved

    @staticmethod
    def restore(saved: dict[str, str | None]) -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Listeners:
    """Loopback listeners that count what reaches them, served by one thread."""

    def __init__(self, unix_path: Path) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self.hits: list[str] = []
        self._sockets: list[socket.socket] = []
        self._stop_r, self._stop_w = socket.socketpair()
        self._sync_r, self._sync_w = socket.socketpair()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self.port = self._tcp(socket.AF_INET, "127.0.0.1")
        try:
            self.port6 = self._tcp(socket.AF_INET6, "::1")
        except OSError:  # no IPv6 on this host: payloads then hit a closed port
            self.port6 = self.port
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        self.udp_port = udp.getsockname()[1]
        self._add(udp, "udp")
        self.unix_path = unix_path
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(unix_path))
        unix.listen(64)
        self._add(unix, "unix")
        self._selector.register(self._stop_r, selectors.EVENT_READ, "stop")
        self._selector.register(self._sync_r, selectors.EVENT_READ, "sync")

    def _tcp(self, family: int, host: str) -> int:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(64)
        self._add(sock, f"tcp {host}")
        return int(sock.getsockname()[1])

    def _add(self, sock: socket.socket, label: str) -> None:
        sock.setblocking(False)
        self._sockets.append(sock)
        self._selector.register(sock, selectors.EVENT_READ, label)

    def start(self) -> Listeners:
        self._thread = threading.Thread(target=self._serve, name="rlm-security-listeners")
        self._thread.daemon = True
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            synced = False
            for key, _ in self._selector.select():
                label = key.data
                if label == "stop":
                    return
                if label == "sync":
                    self._sync_r.recv(64)
                    synced = True
                    continue
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if label == "udp":
                        data, peer = sock.recvfrom(65536)
                        self._hit(f"udp datagram from {peer} ({len(data)} bytes)")
                    else:
                        conn, peer = sock.accept()
                        conn.close()
                        self._hit(f"{label} connection from {peer or 'a local process'}")
                except OSError:
                    continue
            if synced:
                self._synced.set()

    def sync(self, timeout: float = 5.0) -> None:
        """Return once everything that reached a listener before this call is counted.

        One ``select`` reports every ready socket, so the round that sees this call's
        wake-up also sees any connection or datagram queued before it.
        """
        self._synced.clear()
        self._sync_w.send(b"s")
        self._synced.wait(timeout)

    def _hit(self, what: str) -> None:
        with self._lock:
            self.hits.append(what)

    def count(self) -> int:
        with self._lock:
            return len(self.hits)

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return self.hits[mark:]

    def close(self) -> None:
        self._stop_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock in (*self._sockets, self._stop_r, self._stop_w, self._sync_r, self._sync_w):
            sock.close()
        self._selector.close()


class HostFixtures:
    """The canary, the listeners and the host directory, for one suite run."""

    def __init__(self, canary: Canary) -> None:
        self.canary = canary
        self.dir = Path(tempfile.mkdtemp(prefix="rlm-security-"))
        self.secret_file = self.dir / "secret.txt"
        self.secret_file.write_text(f"OPENAI_API_KEY={canary.value}\n", encoding="utf-8")
        self.write_target = self.dir / "written-by-sandbox.txt"
        self.listeners = Listeners(self.dir / "host.sock").start()

    def placeholders(self) -> dict[str, str]:
        return {
            "@PORT@": str(self.listeners.port),
            "@PORT6@": str(self.listeners.port6),
            "@UDP_PORT@": str(self.listeners.udp_port),
            "@HOST_DIR@": str(self.dir),
            "@HOST_FILE@": str(self.secret_file),
            "@HOST_WRITE@": str(self.write_target),
            "@UNIX_SOCKET@": str(self.listeners.unix_path),
            "@ENV_NAME@": self.canary.env_name,
        }

    def host_writes(self) -> list[str]:
        """Files in the host directory that the harness did not put there."""
        expected = {self.secret_file.name, self.listeners.unix_path.name}
        return sorted(p.name for p in self.dir.iterdir() if p.name not in expected)

    def remove_writes(self) -> None:
        for name in self.host_writes():
            path = self.dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def secret_intact(self) -> bool:
        try:
            return self.canary.value in self.secret_file.read_text(encoding="utf-8")
        except OSError:
            return False

    def close(self) -> None:
        self.listeners.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class ProcessSnapshot:
    """The host process's footprint at one moment."""

    rss_mb: float
    threads: int
    fds: int
    children: int

    @classmethod
    def take(cls) -> ProcessSnapshot:
        """The footprint now, after a collection and handing freed heap back to the OS.

        Without the trim, memory that payloads made the host allocate and free (a
        256 MiB message refused at its cap) would still count as resident.
        """
        gc.collect()
        _malloc_trim()
        status = Path("/proc/self/status").read_text()
        rss_kb = threads = 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir("/proc/self/fd"))
        children = 0
        task = Path(f"/proc/self/task/{os.getpid()}/children")
        if task.exists():
            children = len(task.read_text().split())
        return cls(round(rss_kb / 1024, 1), threads, fds, children)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "rss_mb": self.rss_mb,
            "threads": self.threads,
            "fds": self.fds,
            "children": self.children,
        }


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def reset_peak_rss() -> bool:
    """Start a new high-water mark of this process's resident memory; False if unsupported.

    The kernel keeps the peak itself (``VmHWM``), so it is exact even when the peak
    lasts only while one C call holds the GIL and no sampler could run.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb(field: str = "VmHWM") -> float:
    """This process's peak resident memory since :func:`reset_peak_rss`, in MiB
    (``field="VmRSS"``: the resident memory now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0
