"""A second Docker engine the tests start, own and may stop or restart at will.

The main engine serves every other test; this one (started by
``tests/backends/test_docker_remote.py`` for ``DOCKER_HOST=tcp://...`` and by
``tests/test_chaos.py`` to restart under a run) listens on loopback TCP with a
data root, exec root, pid file, containerd namespace and bridge of its own (no
iptables), so stopping it touches nothing else. The sandbox image is loaded into it
with save/load; its data root keeps the image across a restart.

Options: ``tls=True`` serves TLS with client verification, from a CA and
certificates made for the test (:attr:`SecondEngine.certs`, :meth:`SecondEngine.env`);
``userns_remap=True`` remaps container users to the ``dockremap`` user's subordinate
ids (made if missing, see :func:`ensure_dockremap`); ``oci_seccomp=False`` registers
runsc without ``--oci-seccomp``, as an engine set up by hand might.
"""

from __future__ import annotations

import json
import pwd
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


#: The user whose subordinate ids ``userns-remap: "default"`` maps containers to.
REMAP_USER = "dockremap"


def ensure_dockremap() -> tuple[int, int]:
    """Make the ``dockremap`` user and its /etc/subuid and /etc/subgid ranges if
    missing (as scripts/setup-docker.sh does); returns the first uid and gid."""
    try:
        pwd.getpwnam(REMAP_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", REMAP_USER],
            check=True,
        )
    starts = []
    for path in ("/etc/subuid", "/etc/subgid"):
        table = Path(path)
        lines = table.read_text().splitlines() if table.exists() else []
        mine = [line for line in lines if line.startswith(f"{REMAP_USER}:")]
        if not mine:
            # Past every range already given out, so no two users share ids.
            ends = [
                int(f[1]) + int(f[2]) for f in (line.split(":") for line in lines) if len(f) == 3
            ]
            start = max([100000, *ends])
            with table.open("a") as f:
                f.write(f"{REMAP_USER}:{start}:65536\n")
            mine = [f"{REMAP_USER}:{start}:65536"]
        starts.append(int(mine[0].split(":")[1]))
    return starts[0], starts[1]


def make_certs(directory: Path, *, host: str = "127.0.0.1") -> None:
    """A CA and, signed by it, a server certificate for ``host`` and a client one, made
    with the openssl CLI: ``ca.pem``, ``server-cert.pem``/``server-key.pem``, and
    ``cert.pem``/``key.pem`` (the names docker clients look for in DOCKER_CERT_PATH)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *key,
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=rlm test CA " + secrets.token_hex(4),
    )
    for name, subject, ext in (
        ("server", f"/CN={host}", f"subjectAltName=IP:{host}\nextendedKeyUsage=serverAuth\n"),
        ("client", "/CN=rlm-test-client", "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{name}.ext").write_text(ext)
        key_file, cert_file = (
            ("server-key.pem", "server-cert.pem") if name == "server" else ("key.pem", "cert.pem")
        )
        openssl("req", *key, "-keyout", key_file, "-out", f"{name}.csr", "-subj", subject)
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            cert_file,
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    for path in directory.iterdir():
        if path.name.endswith("key.pem"):
            path.chmod(0o600)


class SecondEngine:
    """``dockerd`` on ``tcp://127.0.0.1:PORT``; :meth:`start`, :meth:`stop`, :meth:`restart`."""

    def __init__(
        self, *, tls: bool = False, userns_remap: bool = False, oci_seccomp: bool = True
    ) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise EngineFailed("dockerd is not installed; run scripts/setup-docker.sh")
        self.dockerd = dockerd
        # Short paths: containerd's socket lives under the exec root (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="rlmd-", dir="/tmp"))
        self.url = f"tcp://127.0.0.1:{_free_port()}"
        self.tls = tls
        self.userns_remap = userns_remap
        #: With ``tls``: ca.pem, cert.pem and key.pem for clients (DOCKER_CERT_PATH).
        self.certs = self.root / "certs"
        runsc_args = ["--network=none"] + (["--oci-seccomp"] if oci_seccomp else [])
        config: dict[str, Any] = {
            "runtimes": {
                "runsc": {"path": shutil.which("runsc") or "runsc", "runtimeArgs": runsc_args}
            }
        }
        if tls:
            make_certs(self.certs)
            config.update(
                tls=True,
                tlsverify=True,
                tlscacert=str(self.certs / "ca.pem"),
                tlscert=str(self.certs / "server-cert.pem"),
                tlskey=str(self.certs / "server-key.pem"),
            )
        if userns_remap:
            ensure_dockremap()
            config["userns-remap"] = "default"
            # The remapped root must be able to walk down to its own part of the data
            # root (mkdtemp made this directory 0700).
            self.root.chmod(0o711)
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

    def env(self) -> dict[str, str]:
        """The variables that point a docker client (and rlm) at this engine."""
        env = {"DOCKER_HOST": self.url}
        if self.tls:
            env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(self.certs))
        return env

    @contextmanager
    def client(self, timeout: int = 120) -> Iterator[docker.DockerClient]:
        """A client of this engine, closed on the way out."""
        tls: Any = False
        if self.tls:
            tls = docker.tls.TLSConfig(
                client_cert=(str(self.certs / "cert.pem"), str(self.certs / "key.pem")),
                ca_cert=str(self.certs / "ca.pem"),
                verify=True,
            )
        if self.tls:
            # A fixed API version, so nothing is asked before trust_env is off: requests
            # would let REQUESTS_CA_BUNDLE replace this engine's CA.
            client = docker.DockerClient(
                base_url=self.url, timeout=timeout, tls=tls, version="1.41"
            )
            client.api.trust_env = False
        else:
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


@contextmanager
def running_engine(source: Any, image: str, **options: Any) -> Iterator[SecondEngine]:
    """A :class:`SecondEngine` (``options`` as its own) started with ``image`` copied
    in from the ``source`` engine's client, closed on the way out."""
    engine = SecondEngine(**options)
    try:
        engine.start()
        engine.load_image(source, image)
        yield engine
    finally:
        engine.close()
