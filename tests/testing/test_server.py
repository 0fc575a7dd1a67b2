"""The offline server's own behaviour: faults, markers, stats, the root policy."""

from __future__ import annotations

import anyio

from rlm.provider.client import ModelCallFailure, ModelClient
from rlm.testing import Fault, OfflineModelServer
from rlm.testing.policy import NOT_FOUND, sub_reply


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_faults_apply_to_matching_requests_then_run_out(server: OfflineModelServer) -> None:
    server.add_fault(Fault(status=500, times=2, match="bad"))
    client = ModelClient(api_key="k", base_url=server.base_url)
    outcomes = []
    try:
        for text in ["good", "bad 1", "bad 2", "bad 3"]:
            try:
                outcomes.append((await client.chat("sub", user(text))).text)
            except ModelCallFailure as exc:
                outcomes.append(exc.kind)
    finally:
        await client.aclose()
    assert outcomes == ["echo: good", "server", "server", "echo: bad 3"]
    assert server.stats.by_status[500] == 2
    assert server.faults == []


async def test_markers_fail_single_items_and_latency_applies() -> None:
    with OfflineModelServer(latency=0.05) as server:
        client = ModelClient(api_key="k", base_url=server.base_url)
        results: dict[str, str] = {}

        async def ask(text: str) -> None:
            try:
                results[text] = (await client.chat("sub", user(text))).text
            except ModelCallFailure as exc:
                results[text] = f"{exc.kind}:{exc.status}"

        try:
            async with anyio.create_task_group() as tg:
                for text in ["a", "b [[fail:429]]", "c [[fail:503]]", "d"]:
                    tg.start_soon(ask, text)
        finally:
            await client.aclose()
        assert server.stats.max_in_flight >= 2  # they overlapped
    assert results == {
        "a": "echo: a",
        "b [[fail:429]]": "rate_limit:429",
        "c [[fail:503]]": "server:503",
        "d": "echo: d",
    }


def test_sub_model_finds_the_needle_or_says_not_found() -> None:
    excerpt = "noise\nthe magic word is xyzzy.\nmore noise"
    assert sub_reply(f"Question: What is the magic word?\n---\n{excerpt}") == "xyzzy"
    assert sub_reply(f"Question: What is the other word?\n---\n{excerpt}") == NOT_FOUND
    assert sub_reply("plain prompt") == "echo: plain prompt"


async def test_root_script_plays_in_order() -> None:
    with OfflineModelServer(root_script=["one", "two"]) as server:
        client = ModelClient(api_key="k", base_url=server.base_url)
        try:
            first = await client.chat("root-x", user("q"))
            history = [*user("q"), {"role": "assistant", "content": "one"}, *user("more")]
            second = await client.chat("root-x", history)
        finally:
            await client.aclose()
    assert (first.text, second.text) == ("one", "two")
