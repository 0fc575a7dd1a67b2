"""A second Docker engine the tests start, own and may stop or restart at will.

The main engine serves every other test; this one (started by
``tests/backends/test_docker_remote.py`` for ``DOCKER_HOST=tcp://...`` and by
``tests/test_chaos.py`` to restart under a run) listens on loopback TCP with a
data root, exec root, pid file, containerd namespace and bridge of its own (no
iptables), so stopping it touches nothing else. The sandbox image is loaded into it
with save/load; its data root keeps the image across a restart.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import docker

from rlm.backends.docker import LABEL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineFailed(RuntimeError):
    """The second engine did not start; the message carries the end of its log."""


class SecondEngine:
    """``dockerd`` on ``tcp://127.0.0.1:PORT``; :meth:`start`, :meth:`stop`, :meth:`restart`."""

    def __init__(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise EngineFailed("dockerd is not installed; run scripts/setup-docker.sh")
        self.dockerd = dockerd
        # Short paths: containerd's socket lives under the exec root (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="rlmd-", dir="/tmp"))
        self.url = f"tcp://127.0.0.1:{_free_port()}"
        config = {
            "runtimes": {
                "runsc": {
                    "path": shutil.which("runsc") or "runsc",
                    "runtimeArgs": ["--network=none"],
                }
            }
        }
        (self.root / "daemon.json").write_text(json.dumps(config))
        # A bridge of its own: with --bridge=none, dockerd deletes the host's docker0,
        # which belongs to the main engine. The address is from the benchmarking range
        # (198.18.0.0/15) so it clashes with nothing; no container ever uses it.
        self.bridge = "rlmt" + secrets.token_hex(3)
        subprocess.run(["ip", "link", "add", "name", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", "198.18.213.1/30", "dev", self.bridge], check=True)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def log_tail(self, chars: int = 2000) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-chars:]

    @contextmanager
    def client(self, timeout: int = 120) -> Iterator[docker.DockerClient]:
        """A client of this engine, closed on the way out."""
        client = docker.DockerClient(base_url=self.url, timeout=timeout)
        try:
            yield client
        finally:
            client.close()

    def start(self, timeout: float = 60.0) -> None:
        self._log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.dockerd,
                f"--host={self.url}",
                f"--data-root={self.root / 'd'}",
                f"--exec-root={self.root / 'e'}",
                f"--pidfile={self.root / 'dockerd.pid'}",
                f"--config-file={self.root / 'daemon.json'}",
                "--containerd-namespace=rlmtest",
                "--containerd-plugins-namespace=rlmtest-plugins",
                f"--bridge={self.bridge}",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client(timeout=5) as client:
                    client.ping()
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise EngineFailed(
                        "second dockerd did not start:\n" + self.log_tail()
                    ) from None
                time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the engine as an operator would (SIGTERM); its containers stop too."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def load_image(self, source: Any, image: str) -> None:
        """Copy ``image`` from the ``source`` engine's client into this one."""
        tarball = self.root / "image.tar"
        with tarball.open("wb") as f:
            for chunk in source.images.get(image).save(named=True):
                f.write(chunk)
        with self.client() as client, tarball.open("rb") as f:
            client.images.load(f.read())
        tarball.unlink()

    def sandbox_containers(self) -> list[dict[str, Any]]:
        """Every sandbox container this engine holds, running or not."""
        with self.client(timeout=30) as client:
            return list(client.api.containers(all=True, filters={"label": f"{LABEL}=1"}))

    def close(self) -> None:
        """Remove what is left, stop the engine, delete its bridge."""
        if self.process is not None:
            try:
                with self.client(timeout=30) as client:
                    for item in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
                        client.api.remove_container(item["Id"], force=True)
            except Exception:
                pass
        self.stop()
        subprocess.run(["ip", "link", "del", self.bridge], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
