"""Helpers for tests that run the ``rlm`` console script as a real process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rlm.testing import OfflineModelServer
from tests.support import ROOT_MODEL, SUB_MODEL

RLM = str(Path(sys.executable).parent / "rlm")

#: A model server in a process of its own, so a test can kill it mid-run.
_SERVER = """
import signal, sys
from rlm.testing import Fault, OfflineModelServer
server = OfflineModelServer(latency=float(sys.argv[1])).start()
if sys.argv[2:]:
    server.add_fault(Fault(status=0, model=sys.argv[2], times=10**9))
print(server.base_url, flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
server.stop()
"""


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without rlm's settings, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RLM_"))}
    return {**base, **(extra or {})}


def rlm(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [RLM, *args],
        env=clean_env(env),
        input=data,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def start_rlm(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``rlm *args`` started, not waited for (stdin a pipe the test may hold open)."""
    return subprocess.Popen(
        [RLM, *args],
        env=clean_env(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def model_env(server: OfflineModelServer | str) -> dict[str, str]:
    """Settings that point ``rlm`` at ``server`` (or at a base URL)."""
    base_url = server if isinstance(server, str) else server.base_url
    return {
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": base_url,
        "RLM_MODEL": ROOT_MODEL,
        "RLM_SUB_MODEL": SUB_MODEL,
    }


def assert_one_line_error(
    proc: subprocess.CompletedProcess[str], *words: str, code: int = 2
) -> str:
    """``proc`` failed with ``code`` and said why in one line holding ``words``."""
    assert proc.returncode == code, proc
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


def start_model_server(
    latency: float = 0.0, *, hang: str | None = None
) -> tuple[subprocess.Popen[str], str]:
    """An offline model server in a child process (so it can be killed), and its base
    URL; every call to the model named ``hang`` hangs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(latency), *([hang] if hang else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), "the offline server did not start"
    return proc, url


def read_events(path: Path, *, partial_tail: bool = False) -> list[dict[str, Any]]:
    """A trajectory's events; every line must be whole and one JSON object.

    ``partial_tail`` allows (and drops) a last line cut short: what a file being
    written, or one whose writer was killed with SIGKILL, may end with.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    assert partial_tail or tail == "", f"the trajectory ends mid-line: {tail[-200:]!r}"
    return [json.loads(line) for line in lines]


def wait_for_event(path: Path, kind: str, proc: subprocess.Popen[str], limit: float = 60) -> None:
    """Until the trajectory at ``path`` holds a ``kind`` event (or ``proc`` ends)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and f'"event": "{kind}"' in path.read_text(encoding="utf-8"):
            return
        time.sleep(0.02)
    raise AssertionError(f"no {kind} event in {path} within {limit:g} s (exit {proc.poll()})")


def wait_reading_stdin(proc: subprocess.Popen[str], limit: float = 30) -> None:
    """Until ``proc`` blocks reading its standard input (Linux: /proc/PID/syscall)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            call = Path(f"/proc/{proc.pid}/syscall").read_text().split()
        except OSError:
            time.sleep(5)  # no /proc here: give the interpreter time to start
            return
        if call[:2] == ["0", "0x0"]:  # read(0, ...)
            return
        time.sleep(0.02)
    raise AssertionError(f"rlm never read its standard input (exit {proc.poll()})")


def owner_filter(pid: int) -> dict[str, str]:
    """Docker's filter for the sandbox containers of process ``pid`` on this host."""
    from rlm.backends.docker import OWNER_LABEL

    return {"label": f"{OWNER_LABEL}={socket.gethostname()}:{pid}"}
