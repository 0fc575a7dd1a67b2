"""The model client against the offline server over real HTTP."""

from __future__ import annotations

import socket
import traceback

import pytest

from rlm.config import RLMConfig
from rlm.errors import ConfigurationError
from rlm.provider.client import ChatResult, ModelCallFailure, ModelClient
from rlm.testing import Fault, OfflineModelServer

MESSAGES = [{"role": "user", "content": "hello"}]


async def failure_of(
    base_url: str, prompt: str = "hello", *, api_key: str = "k", timeout: float = 120.0
) -> ModelCallFailure:
    """The failure one chat call ends in (the test fails if it succeeds)."""
    client = ModelClient(api_key=api_key, base_url=base_url, timeout=timeout)
    try:
        with pytest.raises(ModelCallFailure) as caught:
            await client.chat("sub", [{"role": "user", "content": prompt}])
    finally:
        await client.aclose()
    return caught.value


async def test_chat_returns_text_and_usage(server: OfflineModelServer) -> None:
    client = ModelClient(api_key="k", base_url=server.base_url)
    try:
        result = await client.chat("sub", MESSAGES)
    finally:
        await client.aclose()
    assert result.text == "echo: hello"
    assert result.prompt_tokens > 0 and result.completion_tokens > 0


def test_no_key_is_a_clear_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        ModelClient(api_key=None)


def test_config_reads_env_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("RLM_MODEL=from-dotenv\nRLM_SUB_MODEL=sub-dotenv\n")
    monkeypatch.setenv("RLM_MODEL", "from-env")
    config = RLMConfig.from_env(backend="restricted")
    assert config.model == "from-env"  # the environment wins over .env
    assert config.effective_sub_model == "sub-dotenv"
    assert RLMConfig.from_env(model="flag").model == "flag"  # flags win over both
    monkeypatch.setenv("RLM_CELL_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="RLM_CELL_TIMEOUT"):
        RLMConfig.from_env()
    monkeypatch.delenv("RLM_CELL_TIMEOUT")
    with pytest.raises(ConfigurationError, match="unknown backend"):
        RLMConfig.from_env(backend="vm")


@pytest.mark.parametrize(
    ("fault", "kind", "retryable"),
    [
        (Fault(status=429, retry_after=1.5), "rate_limit", True),
        (Fault(status=500), "server", True),
        (Fault(status=503), "server", True),
        (Fault(status=400), "bad_request", False),
        (Fault(status=401), "auth", False),
        (Fault(status=404), "not_found", False),
    ],
)
async def test_status_errors_are_classified(
    server: OfflineModelServer, fault: Fault, kind: str, retryable: bool
) -> None:
    server.add_fault(fault)
    failure = await failure_of(server.base_url)
    assert failure.kind == kind
    assert failure.status == fault.status
    assert failure.retryable is retryable
    if fault.retry_after is not None:
        assert failure.retry_after == fault.retry_after


async def test_hanging_server_times_out_and_the_request_is_dropped(
    server: OfflineModelServer,
) -> None:
    server.add_fault(Fault(status=0))
    failure = await failure_of(server.base_url, timeout=0.3)
    assert failure.kind == "timeout" and failure.retryable


async def test_unreachable_server_says_what_to_check() -> None:
    with socket.socket() as sock:  # a loopback port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    failure = await failure_of(f"http://127.0.0.1:{port}/v1", timeout=2)
    assert failure.kind == "connection" and "OPENAI_BASE_URL" in str(failure)


async def test_stream_yields_deltas_then_the_whole_result(server: OfflineModelServer) -> None:
    client = ModelClient(api_key="k", base_url=server.base_url)
    parts = []
    try:
        async for part in client.chat_stream("sub", MESSAGES):
            parts.append(part)
    finally:
        await client.aclose()
    *deltas, final = parts
    assert isinstance(final, ChatResult)
    assert "".join(deltas) == final.text == "echo: hello"
    assert len(deltas) > 1
    assert final.prompt_tokens > 0


async def test_a_malformed_completion_is_a_clear_failure(server: OfflineModelServer) -> None:
    failure = await failure_of(server.base_url, "x [[malformed]]")
    assert "malformed completion" in str(failure)
    assert failure.kind == "bad_response" and not failure.retryable


async def test_no_failure_message_carries_the_key(server: OfflineModelServer) -> None:
    key = "sk-canary-3f9a1c"
    failures: list[ModelCallFailure] = []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    for base_url, prompt, fault in (
        (nobody, "x", None),  # connection refused
        (server.base_url, "x [[hang]]", None),  # timeout
        (server.base_url, "x", Fault(status=401)),
        (server.base_url, "x", Fault(status=500)),
        (server.base_url, "x", Fault(status=307)),
        (server.base_url, "x [[malformed]]", None),
    ):
        if fault is not None:
            server.add_fault(fault)
        failures.append(await failure_of(base_url, prompt, api_key=key, timeout=0.5))
    kinds = [f.kind for f in failures]
    assert kinds == ["connection", "timeout", "auth", "server", "bad_request", "bad_response"]
    for failure in failures:
        chain = "".join(traceback.format_exception(failure))
        assert key not in chain


async def test_a_redirect_is_not_followed_with_the_key(server: OfflineModelServer) -> None:
    with OfflineModelServer() as elsewhere:
        server.add_fault(Fault(status=307, location=f"{elsewhere.base_url}/chat/completions"))
        failure = await failure_of(server.base_url, api_key="sk-stays-here")
        assert failure.kind == "bad_request" and failure.status == 307
        assert "OPENAI_BASE_URL" in str(failure) and elsewhere.base_url in str(failure)
        assert elsewhere.stats.requests == 0 and not elsewhere.stats.user_agents
