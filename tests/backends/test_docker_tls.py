"""A remote engine over TLS, for real: a second dockerd on loopback serving TLS with
client verification, from a CA and certificates the test makes (tests/engines.py).

rlm reaches it from the environment alone (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``,
``DOCKER_CERT_PATH``); a client holding another CA, and one without TLS, are
refused with messages that say what is wrong. An engine over plain TCP that is not
on loopback is refused before any connection unless ``RLM_DOCKER_ALLOW_PLAINTEXT=1``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm.backends.docker import ContainerSpec, DockerSandbox, doctor_checks, unavailable_reason
from rlm.backends.docker import engine as engine_module
from rlm.config import RLMConfig
from rlm.errors import SandboxUnavailable
from tests.engines import SecondEngine, make_certs, running_engine
from tests.support import IMAGE, FakeBatcher, make_bridge

pytestmark = pytest.mark.docker

DOCKER_VARS = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "RLM_DOCKER_ALLOW_PLAINTEXT")


@pytest.fixture(scope="module")
def tls_engine(docker_client: Any) -> Iterator[SecondEngine]:
    with running_engine(docker_client, IMAGE, tls=True) as engine:
        yield engine


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Sets the docker variables (the rest unset) for one test."""

    def set_env(**values: str) -> None:
        for name in DOCKER_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_a_session_runs_over_verified_tls(
    runtime: str, tls_engine: SecondEngine, env: Any
) -> None:
    env(**tls_engine.env())
    assert unavailable_reason(RLMConfig(image=IMAGE, docker_runtime=runtime)) is None
    batcher = FakeBatcher()
    # No client given: the sandbox connects from the environment, over TLS.
    box = DockerSandbox(make_bridge(batcher), spec=ContainerSpec(image=IMAGE, runtime=runtime))
    try:
        await box.start()
        with tls_engine.client() as client:
            assert box.container_id in [c["Id"] for c in client.api.containers()]
        await box.load_context("tls " * 250_000)
        result = await box.execute("print(len(context), llm_query('over tls'))", 30)
        assert result.error is None, result.error
        assert result.stdout == "1000000 echo:over tls\n"
    finally:
        await box.close()


def test_a_wrong_ca_is_refused_with_a_clear_message(
    tls_engine: SecondEngine, env: Any, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca"
    make_certs(other)  # a CA of its own, and a client certificate it signed
    env(**(tls_engine.env() | {"DOCKER_CERT_PATH": str(other)}))
    with pytest.raises(SandboxUnavailable) as caught:
        engine_module.connect(timeout=10)
    message = str(caught.value)
    assert f"the Docker engine at {tls_engine.url} failed TLS verification" in message
    assert f"{other}/ca.pem" in message
    reason = unavailable_reason(RLMConfig(image=IMAGE))
    assert reason is not None and "failed TLS verification" in reason
    (name, ok, detail), *_ = doctor_checks(RLMConfig(image=IMAGE))
    assert (name, ok) == ("docker engine", False) and "failed TLS verification" in detail


def test_a_client_without_tls_is_told_the_engine_needs_it(
    tls_engine: SecondEngine, env: Any
) -> None:
    env(DOCKER_HOST=tls_engine.url)  # loopback, so rlm tries; the engine says no
    with pytest.raises(SandboxUnavailable) as caught:
        engine_module.connect(timeout=10)
    assert str(caught.value) == (
        f"the Docker engine at {tls_engine.url} requires TLS: set DOCKER_TLS_VERIFY=1 and "
        "DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem)"
    )


async def test_plain_tcp_off_loopback_is_refused_unless_opted_in(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docker

    opened: list[str] = []

    def from_env(timeout: int) -> Any:
        opened.append("from_env")  # where a client would be made: nothing is sent
        raise docker.errors.DockerException("stop here: no engine at this address")

    monkeypatch.setattr(engine_module, "_from_env", from_env)
    # 198.18.0.0/15 is for benchmarks: nothing answers, and nothing is sent to it.
    env(DOCKER_HOST="tcp://198.18.0.7:2375")
    box = DockerSandbox(make_bridge(), spec=ContainerSpec(image=IMAGE))
    with pytest.raises(SandboxUnavailable) as caught:
        await box.start()
    await box.close()
    assert str(caught.value).startswith(
        "refusing the Docker engine at tcp://198.18.0.7:2375: it would be reached over "
        "plain TCP, without TLS"
    )
    assert "RLM_DOCKER_ALLOW_PLAINTEXT=1" in str(caught.value)
    reason = unavailable_reason(RLMConfig(image=IMAGE))
    assert reason is not None and reason.startswith("refusing the Docker engine")
    # TLS that does not check the engine's certificate is no better.
    env(DOCKER_HOST="tcp://198.18.0.7:2376", DOCKER_CERT_PATH="/nonexistent")
    with pytest.raises(SandboxUnavailable, match="TLS without checking its certificate"):
        engine_module.connect()
    assert opened == []  # refused before any connection
    env(DOCKER_HOST="tcp://198.18.0.7:2375", RLM_DOCKER_ALLOW_PLAINTEXT="1")
    with pytest.raises(docker.errors.DockerException, match="stop here"):
        engine_module.connect()
    assert opened == ["from_env"]  # the operator opted in: rlm goes ahead


def test_which_transports_need_tls() -> None:
    problem = engine_module.transport_problem
    assert problem({}) is None  # the local Unix socket
    assert problem({"DOCKER_HOST": "unix:///run/docker.sock"}) is None
    for host in ("127.0.0.1", "127.3.4.5", "[::1]", "localhost"):
        assert problem({"DOCKER_HOST": f"tcp://{host}:2375"}) is None, host
    for host in ("10.0.0.5", "[2001:db8::1]", "engine.example", "0.0.0.0"):
        assert problem({"DOCKER_HOST": f"tcp://{host}:2375"}) is not None, host
        assert problem({"DOCKER_HOST": f"tcp://{host}:2376", "DOCKER_TLS_VERIFY": "1"}) is None
        allow = {"DOCKER_HOST": f"tcp://{host}:2375", "RLM_DOCKER_ALLOW_PLAINTEXT": "1"}
        assert problem(allow) is None
        assert problem(allow | {"RLM_DOCKER_ALLOW_PLAINTEXT": "0"}) is not None
