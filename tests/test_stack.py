"""The one place a session's stack is built: wiring, ownership, backend choice."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import rlm.stack
from rlm import RLM
from rlm.backends import Sandbox
from rlm.bridge import SessionBridge
from rlm.config import RLMConfig
from rlm.demo import make_haystack
from rlm.events import EVENT_NAMES
from rlm.provider.client import ModelClient
from rlm.session import SessionLimits
from rlm.stack import BackendChoice, build_session, choose_backend
from rlm.subcalls.batcher import Batcher
from rlm.testing import OfflineModelServer
from tests.support import FakeBatcher, make_config

RESTRICTED = BackendChoice("restricted", "asked for")


async def test_a_session_is_bound_to_the_configs_tenant_limits_and_sub_model(
    server: OfflineModelServer,
) -> None:
    limits = SessionLimits(max_sub_calls=5)
    config = make_config(server, tenant="acme", limits=limits)
    events: list[dict[str, Any]] = []
    stack = build_session(config, RESTRICTED, emit=events.append)
    try:
        assert stack.session.tenant == "acme" and stack.session.limits is limits
        assert stack.session.sub_model == config.sub_model
        assert stack.bridge.session is stack.session
        assert stack.sandbox.bridge is stack.bridge
        await stack.start("the context")
        cell = await stack.sandbox.execute("print(len(context), llm_query('hi'))", 10.0)
        assert cell.error is None and cell.stdout.startswith("11 ")
        assert stack.session.usage.sub_calls == 1
        assert {e["event"] for e in events} <= EVENT_NAMES
    finally:
        await stack.aclose()


async def test_a_stack_closes_the_client_it_made_but_not_a_shared_one(
    server: OfflineModelServer,
) -> None:
    config = make_config(server)
    own = build_session(config, RESTRICTED)
    assert isinstance(own.client, ModelClient) and own.owns_client
    shared_client = ModelClient(api_key="test-key", base_url=server.base_url)
    shared = build_session(config, RESTRICTED, batcher=Batcher(shared_client))
    assert shared.client is shared_client and not shared.owns_client
    closed: list[ModelClient] = []
    for client in (own.client, shared_client):
        original = client.aclose

        async def record(client: ModelClient = client, original: Any = original) -> None:
            closed.append(client)
            await original()

        client.aclose = record  # type: ignore[method-assign]
    await own.aclose()
    await own.aclose()  # twice is fine, and closes nothing twice
    await shared.aclose()
    assert closed == [own.client]
    await shared_client.aclose()


async def test_a_failed_start_closes_everything(server: OfflineModelServer) -> None:
    closed: list[str] = []

    class Broken(Sandbox):
        name = "broken"

        async def start(self) -> None:
            raise RuntimeError("cannot start")

        async def load_context(self, context: Any) -> None:
            raise AssertionError("never reached")

        async def execute(self, code: str, timeout: float) -> Any:
            raise AssertionError("never reached")

        async def get_variable(self, name: str) -> str:
            raise AssertionError("never reached")

        async def close(self) -> None:
            closed.append("sandbox")

    stack = build_session(make_config(server), sandboxes=Broken)
    with pytest.raises(RuntimeError, match="cannot start"):
        await stack.start("ctx")
    assert closed == ["sandbox"]
    assert not stack.owns_client  # closed with it


def test_the_harness_and_exec_can_swap_batcher_bridge_and_sandboxes() -> None:
    made: list[SessionBridge] = []

    class Recording(SessionBridge):
        pass

    def sandboxes(bridge: SessionBridge) -> Sandbox:
        made.append(bridge)
        from rlm.backends.restricted import RestrictedSandbox

        return RestrictedSandbox(bridge)

    batcher = FakeBatcher()
    stack = build_session(
        RLMConfig(sub_model="s"), batcher=batcher, sandboxes=sandboxes, bridge=Recording
    )
    assert isinstance(stack.bridge, Recording) and made == [stack.bridge]
    assert stack.batcher is batcher and stack.client is None and not stack.owns_client


def test_a_stack_needs_a_backend_or_a_sandbox_factory() -> None:
    with pytest.raises(TypeError, match="needs a backend"):
        build_session(RLMConfig())


async def test_auto_is_resolved_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []

    def resolve(config: RLMConfig) -> BackendChoice:
        threads.append(threading.current_thread())
        return RESTRICTED

    monkeypatch.setattr(rlm.stack, "resolve_backend", resolve)
    assert await choose_backend(RLMConfig(backend="auto")) == RESTRICTED
    assert threads and threads[0] is not threading.main_thread()


async def test_an_explicit_backend_needs_no_engine() -> None:
    assert await choose_backend(RLMConfig(backend="restricted")) == RESTRICTED
    assert (await choose_backend(RLMConfig(backend="docker"))).name == "docker"


async def test_an_rlm_resolves_auto_once_for_all_its_runs(
    server: OfflineModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[RLMConfig] = []

    def resolve(config: RLMConfig) -> BackendChoice:
        calls.append(config)
        return BackendChoice("restricted", "stand-in for the engine check")

    monkeypatch.setattr(rlm.stack, "resolve_backend", resolve)
    haystack = make_haystack(2_000)
    rlm_ = RLM(make_config(server, backend="auto"))
    for _ in range(2):
        result = await rlm_.acompletion(haystack.text, haystack.query)
        assert result.answer == haystack.answer
        assert result.trajectory[0]["backend_reason"] == "stand-in for the engine check"
    assert len(calls) == 1
