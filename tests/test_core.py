"""The root loop end to end: the real openai SDK, real HTTP, a real sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlm import RLM, ModelCallError, SessionLimits
from rlm.demo import make_haystack
from rlm.testing import Fault, OfflineModelServer
from rlm.testing.policy import TARGET_CHUNKS
from tests.support import ROOT_MODEL, SUB_MODEL, make_config

BACKENDS = ["restricted", pytest.param("docker", marks=pytest.mark.docker)]


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


def seen_by_root(server: OfflineModelServer) -> str:
    """Everything the loop sent to the root model as the last message of a request."""
    return "\n".join(server.stats.prompts)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_needle_found_end_to_end(
    server: OfflineModelServer, backend: str, tmp_path: Path
) -> None:
    haystack = make_haystack(20_000)
    events: list[dict[str, Any]] = []
    path = tmp_path / "run.jsonl"
    rlm = RLM(make_config(server, backend=backend), trajectory_path=path, on_event=events.append)
    result = await rlm.acompletion(haystack.text, haystack.query)

    assert result.answer == haystack.answer
    assert result.iterations == 3 and not result.forced
    assert result.backend.startswith(backend)
    assert result.usage.sub_calls == TARGET_CHUNKS
    assert result.usage.by_model[SUB_MODEL].calls == TARGET_CHUNKS
    assert result.usage.by_model[ROOT_MODEL].calls == 3
    assert result.usage.by_model[SUB_MODEL].prompt_tokens > len(haystack.text) // 8
    kinds = [e["event"] for e in result.trajectory]
    assert kinds[0] == "run_start" and kinds[-2:] == ["final", "usage"]
    assert {"root_call", "cell", "output", "batch_start", "batch_end"} <= set(kinds)
    assert any(e["event"] == "batch_progress" for e in events)  # callbacks see progress
    on_disk = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["event"] for e in on_disk] == kinds
    # The context reached the sandbox, never the root model's messages.
    assert server.stats.largest_request[ROOT_MODEL] < 50_000


@pytest.mark.parametrize("backend", BACKENDS)
async def test_final_var_reads_the_sandbox_and_a_missing_one_is_told(
    backend: str,
) -> None:
    script = [
        "FINAL_VAR(result)",  # not defined yet
        cell("result = 'forty' + '-two'") + "\nFINAL_VAR(result)",
    ]
    with OfflineModelServer(root_script=script) as server:
        result = await RLM(make_config(server, backend=backend)).acompletion("ctx", "q")
        told = seen_by_root(server)
    assert result.answer == "forty-two"
    assert result.iterations == 2
    assert "no variable named 'result'" in told
    assert [e["name"] for e in result.trajectory if e["event"] == "missing_variable"] == ["result"]


async def test_final_answer_and_state_across_cells() -> None:
    script = [
        cell("counter = len(context)"),
        cell("counter += 1\nprint('counter', counter)"),
        "FINAL(the answer is 4)",
    ]
    with OfflineModelServer(root_script=script) as server:
        result = await RLM(make_config(server)).acompletion("abc", "q")
        told = seen_by_root(server)
    assert result.answer == "the answer is 4"
    assert "counter 4" in told


async def test_iteration_bound_forces_an_answer() -> None:
    script = [cell("x = 1")] * 3 + ["FINAL(best guess)"]
    with OfflineModelServer(root_script=script) as server:
        result = await RLM(make_config(server, max_iterations=3)).acompletion("ctx", "q")
        told = seen_by_root(server)
    assert result.forced
    assert result.answer == "best guess"
    assert result.iterations == 4
    assert "used every iteration" in told


async def test_code_errors_are_shown_to_the_model() -> None:
    script = [cell("values = [1, 2]\nprint(values[5])"), "FINAL(recovered)"]
    with OfflineModelServer(root_script=script) as server:
        result = await RLM(make_config(server)).acompletion("ctx", "q")
        told = seen_by_root(server)
    assert result.answer == "recovered"
    assert "IndexError" in told


async def test_malformed_replies_get_a_clear_nudge() -> None:
    script = ["I will think about it.", "```repl\nprint('never closed')\n", "FINAL(ok)"]
    with OfflineModelServer(root_script=script) as server:
        result = await RLM(make_config(server)).acompletion("ctx", "q")
        told = seen_by_root(server)
    assert result.answer == "ok"
    assert "no ```repl block and no FINAL" in told
    assert "never closed" in told
    assert "never closed')" not in told.split("Note:")[0]  # the broken block did not run


async def test_long_output_is_cut_with_a_note() -> None:
    script = [cell("print('a' * 50_000)"), "FINAL(done)"]
    with OfflineModelServer(root_script=script) as server:
        await RLM(make_config(server, output_limit=1_000)).acompletion("ctx", "q")
        told = seen_by_root(server)
    assert "[output truncated: showing 1,000 of" in told
    assert "a" * 1_001 not in told


@pytest.mark.parametrize("backend", BACKENDS)
async def test_batch_order_and_per_item_failure_in_model_code(backend: str) -> None:
    code = (
        "r = llm_batch(['one', 'two [[fail:400]]', 'three'], max_concurrent=2)\n"
        "print([isinstance(x, LLMError) for x in r])\n"
        "print(r[0], '|', r[2], '|', r[1].kind)\n"
        "q = llm_query('solo')\n"
        "print(q)"
    )
    with OfflineModelServer(root_script=[cell(code), "FINAL(done)"]) as server:
        result = await RLM(make_config(server, backend=backend)).acompletion("ctx", "q")
        told = seen_by_root(server)
    assert "[False, True, False]" in told
    assert "echo: one | echo: three | bad_request" in told
    assert "echo: solo" in told
    assert result.usage.sub_calls == 4


@pytest.mark.parametrize("context", [["alpha", "beta", "gamma"], {"k": [1, 2], "v": "x"}])
async def test_list_and_dict_contexts(context: Any) -> None:
    script = [cell("print(type(context).__name__, len(context))"), "FINAL(ok)"]
    with OfflineModelServer(root_script=script) as server:
        await RLM(make_config(server)).acompletion(context, "q")
        told = seen_by_root(server)
    assert f"{type(context).__name__} {len(context)}" in told


async def test_unsupported_context_type_is_refused(server: OfflineModelServer) -> None:
    with pytest.raises(TypeError, match="str, a list or a JSON-able dict"):
        await RLM(make_config(server)).acompletion(object(), "q")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_100_mb_context_loads_without_touching_the_messages(backend: str) -> None:
    line = "filler line of the haystack, nothing to see here, move along please\n"
    body = line * (100_000_000 // len(line))
    context = body + "the secret access code is OWL-9090.\n" + body[:1000]
    assert len(context) >= 100_000_000
    with OfflineModelServer() as server:
        result = await RLM(make_config(server, backend=backend, cell_timeout=120)).acompletion(
            context, "What is the secret access code?"
        )
        assert server.stats.largest_request[ROOT_MODEL] < 50_000
    assert result.answer == "OWL-9090"


async def test_root_retries_a_429_then_answers(server: OfflineModelServer) -> None:
    server.add_fault(Fault(status=429, retry_after=0.05, model=ROOT_MODEL))
    result = await RLM(make_config(server)).acompletion(make_haystack(1000).text, "What is x?")
    assert result.usage.by_model[ROOT_MODEL].retries == 1
    assert any(e["event"] == "root_retry" for e in result.trajectory)


async def test_root_auth_failure_is_raised_clearly(server: OfflineModelServer) -> None:
    server.add_fault(Fault(status=401, model=ROOT_MODEL))
    with pytest.raises(ModelCallError, match="OPENAI_API_KEY"):
        await RLM(make_config(server)).acompletion("ctx", "q")


async def test_streaming_delivers_root_tokens_as_events(server: OfflineModelServer) -> None:
    deltas: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "root_delta":
            deltas.append(event["text"])

    haystack = make_haystack(2_000)
    result = await RLM(make_config(server), on_event=on_event, stream=True).acompletion(
        haystack.text, haystack.query
    )
    assert result.answer == haystack.answer
    assert "".join(deltas).count("```repl") == 3
    assert all(e["event"] != "root_delta" for e in result.trajectory)


def test_sync_completion_wraps_the_async_one(server: OfflineModelServer) -> None:
    haystack = make_haystack(2_000)
    result = RLM(make_config(server)).completion(haystack.text, haystack.query)
    assert result.answer == haystack.answer
    assert result.wall_time_s > 0


@pytest.mark.docker
async def test_a_service_shares_one_batcher_and_one_warm_pool(server: OfflineModelServer) -> None:
    # As the README's service example imports them: from the package itself.
    from rlm import Batcher, ContainerPool, ContainerSpec, ModelClient

    haystack = make_haystack(5_000)
    client = ModelClient(api_key="test-key", base_url=server.base_url)
    batcher = Batcher(client)
    try:
        async with ContainerPool(ContainerSpec(), size=2) as pool:
            await pool.wait_full()
            for tenant in ("acme", "globex"):
                config = make_config(server, backend="docker", tenant=tenant)
                rlm = RLM(config, batcher=batcher, pool=pool)
                result = await rlm.acompletion(haystack.text, haystack.query)
                assert result.answer == haystack.answer
            assert pool.handed_out == 2 and pool.cold_starts == 0
    finally:
        await client.aclose()
    # Each tenant's usage is kept apart by the shared batcher.
    assert batcher.tenant_usage("acme").sub_calls == TARGET_CHUNKS
    assert batcher.tenant_usage("globex").sub_calls == TARGET_CHUNKS


# -- how a run ended: RLMResult.status --------------------------------------------------


async def test_an_answer_has_status_answered(server: OfflineModelServer) -> None:
    haystack = make_haystack(2_000)
    result = await RLM(make_config(server)).acompletion(haystack.text, haystack.query)
    assert (result.status, result.exit_code, result.limits) == ("answered", 0, {})
    assert result.to_dict()["status"] == "answered"


async def test_a_forced_answer_has_status_forced() -> None:
    with OfflineModelServer(root_script=[cell("x = 1"), "FINAL(made to)"]) as server:
        result = await RLM(make_config(server, max_iterations=1)).acompletion("ctx", "q")
    assert (result.answer, result.forced, result.status, result.exit_code) == (
        "made to",
        True,
        "forced",
        3,
    )


async def test_a_missing_variable_when_forced_is_no_answer() -> None:
    with OfflineModelServer(root_script=[cell("x = 1"), "FINAL_VAR(nothing)"]) as server:
        result = await RLM(make_config(server, max_iterations=1)).acompletion("ctx", "q")
    assert result.status == "no_answer" and result.forced
    final = next(e for e in result.trajectory if e["event"] == "final")
    assert (final["status"], final["forced"]) == ("no_answer", True)
    assert result.answer == "(no answer: FINAL_VAR named a missing variable 'nothing')"
    assert [e["name"] for e in result.trajectory if e["event"] == "missing_variable"] == ["nothing"]


@pytest.mark.parametrize(
    ("limits", "code", "kind", "refused", "stopped"),
    [
        (
            SessionLimits(max_sub_calls=2),
            "llm_batch(['a', 'b', 'c'])",
            "sub_calls",
            3,
            "max_sub_calls",
        ),
        (SessionLimits(max_batch_size=2), "llm_batch(['a', 'b', 'c'])", "batch_size", 3, None),
        (
            SessionLimits(max_prompt_chars=5),
            "llm_query('too long a prompt')",
            "prompt_chars",
            1,
            None,
        ),
        (SessionLimits(max_tokens=1), "llm_batch(['a', 'b'])", "tokens", 2, "max_tokens"),
    ],
)
async def test_a_limit_reached_is_recorded_and_outranks_an_answer(
    limits: SessionLimits, code: str, kind: str, refused: int, stopped: str | None
) -> None:
    # The model catches the refusal and answers anyway: the answer may lack that work.
    # A run limit (sub-calls, tokens) also stops the run: the model is made to answer,
    # or, with the tokens spent, the run ends without another model call.
    guarded = f"try:\n    print({code})\nexcept RLMCallError as e:\n    print('refused', e)"
    with OfflineModelServer(root_script=[cell(guarded), "FINAL(done)"]) as server:
        config = make_config(server, limits=limits)
        result = await RLM(config).acompletion("ctx", "q")
    assert result.stopped == stopped and result.forced == (stopped is not None)
    if stopped != "max_tokens":
        assert result.answer == "done"
    assert (result.status, result.exit_code) == ("limit", 4)
    assert result.limits == {kind: refused}
    assert result.to_dict()["limits"] == {kind: refused}
    final = next(e for e in result.trajectory if e["event"] == "final")
    assert (final["status"], final["limits"]) == ("limit", {kind: refused})


async def test_no_limit_is_reached_when_the_budget_suffices() -> None:
    script = [cell("print(llm_batch(['a', 'b']))"), "FINAL(done)"]
    with OfflineModelServer(root_script=script) as server:
        config = make_config(server, limits=SessionLimits(max_sub_calls=2))
        result = await RLM(config).acompletion("ctx", "q")
    assert (result.status, result.limits) == ("answered", {})
