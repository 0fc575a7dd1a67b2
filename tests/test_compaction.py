"""Compaction: a long root conversation is summarized and the run goes on."""

from __future__ import annotations

from typing import Any

import pytest

from rlm import RLM
from rlm.compaction import Compaction, estimate_tokens
from rlm.config import RLMConfig
from rlm.testing import OfflineModelServer
from tests.support import make_config


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


def root_model(messages: list[dict[str, Any]], model: str | None = None) -> str:
    """Prints a lot for a few turns; summarizes when asked; then reads the transcript."""
    last = str(messages[-1]["content"])
    if "Summarize your work so far" in last:
        return "SUMMARY: step counter is in `step`; keep printing until asked."
    if any("was summarized to save space" in str(m["content"]) for m in messages):
        return cell("n = len(transcript)\nfirst = transcript[1]['content'][:6]") + "\nFINAL_VAR(n)"
    return cell("try:\n    step += 1\nexcept NameError:\n    step = 1\nprint('row ' * 400, step)")


def test_tokens_are_counted_by_the_provider_and_estimated_after() -> None:
    compaction = Compaction(RLMConfig(root_context_window=1000))
    messages = [{"role": "system", "content": "x" * 400}, {"role": "user", "content": "y" * 400}]
    assert compaction.tokens(messages) == estimate_tokens(messages) == 208
    compaction.heard(messages, prompt_tokens=500, completion=20)
    messages += [{"role": "assistant", "content": "z" * 40}, {"role": "user", "content": "w" * 400}]
    # The provider's 520 for the first request and reply, plus about 100 + 4 since.
    assert compaction.tokens(messages) == 520 + 104
    assert not compaction.due(messages)
    messages.append({"role": "user", "content": "v" * 1200})
    assert compaction.due(messages)  # 0.85 of 1000 reached


@pytest.mark.parametrize(
    "backend", ["restricted", pytest.param("docker", marks=pytest.mark.docker)]
)
async def test_compaction_fires_on_a_long_run_and_the_run_still_answers(
    backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "docker":
        request.getfixturevalue("docker_client")
    server = OfflineModelServer()
    server._root_reply = root_model  # type: ignore[method-assign]
    with server:
        config = make_config(server, backend=backend, root_context_window=3000, max_iterations=12)
        result = await RLM(config).acompletion("ctx", "Count the rows.")
        largest = server.stats.largest_request["root-test"]
    compactions = [e for e in result.trajectory if e["event"] == "compaction"]
    assert len(compactions) >= 1
    first = compactions[0]
    assert first["tokens_before"] >= 0.85 * 3000 > first["tokens_after"]
    # The full transcript was in the sandbox: system, query, and every turn since.
    assert int(result.answer) >= 8
    assert result.status == "answered"
    # No request the root model got was far past its window.
    assert largest < 3000 * 4 * 1.2
