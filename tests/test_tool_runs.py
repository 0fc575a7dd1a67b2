"""Host tools in whole runs: the root model's code and a child's call the same tool."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from rlm import RLM
from rlm.testing import OfflineModelServer
from tests.cli_support import owner_filter
from tests.support import ROOT_MODEL, make_config

BACKENDS = ["restricted", pytest.param("docker", marks=pytest.mark.docker)]
CHILD_MODEL = "root-child"


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


class Inventory:
    """A host-side tool with state the sandbox can only reach through calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.threads: set[int] = set()

    def stock(self, item: str, warehouse: int = 1) -> dict[str, int]:
        """How many of ``item`` the warehouse holds."""
        self.calls.append((item, warehouse))
        self.threads.add(threading.get_ident())
        return {"count": len(item) * 10 + warehouse}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_tool_is_used_by_the_root_and_by_a_child(
    backend: str, request: pytest.FixtureRequest
) -> None:
    inventory = Inventory()
    root = [
        cell(
            "mine = stock('apples')['count']\n"
            "theirs = rlm_query('count pears', context='pears')\n"
            "both = f'{mine} {theirs}'"
        ),
        "FINAL_VAR(both)",
    ]
    child = [cell("n = stock(context, warehouse=3)['count']"), "FINAL_VAR(n)"]
    with OfflineModelServer(scripts={ROOT_MODEL: root, CHILD_MODEL: child}) as server:
        config = make_config(server, backend=backend, max_depth=2, child_model=CHILD_MODEL)
        result = await RLM(config, tools=[inventory.stock]).acompletion("ctx", "q")
        child_system = "".join(server.stats.systems[CHILD_MODEL])
    assert result.answer == "61 53"
    assert inventory.calls == [("apples", 1), ("pears", 3)]
    ends = [e for e in result.trajectory if e["event"] == "tool_end"]
    assert [(e["name"], e["ok"], e["depth"]) for e in ends] == [
        ("stock", True, 0),
        ("stock", True, 1),
    ]
    assert "stock(item: str" in child_system  # children are offered the tools too
    if backend == "docker":
        engine = request.getfixturevalue("docker_client")
        assert engine.containers.list(all=True, filters=owner_filter(os.getpid())) == []


async def test_the_root_model_is_told_the_tools_signatures_and_docstrings() -> None:
    inventory = Inventory()
    with OfflineModelServer(scripts={ROOT_MODEL: ["FINAL(ok)"]}) as server:
        events: list[dict[str, Any]] = []
        rlm = RLM(make_config(server), tools=[inventory.stock], on_event=events.append)
        await rlm.acompletion("ctx", "q")
        (system,) = server.stats.systems[ROOT_MODEL]
    start = next(e for e in events if e["event"] == "run_start")
    assert start["tools"] == ["stock"]
    assert "stock(item: str, warehouse: int = 1)" in system
    assert "How many of ``item`` the warehouse holds." in system
    assert "rlm_query" not in system  # max_depth 1: no children to offer


async def test_child_tools_can_differ_from_the_root_s() -> None:
    inventory = Inventory()
    root = [cell("r = rlm_query('try', context='x')"), "FINAL_VAR(r)"]
    child = [
        cell("try:\n    n = stock('x')\nexcept NameError:\n    n = 'no tool here'"),
        "FINAL_VAR(n)",
    ]
    with OfflineModelServer(scripts={ROOT_MODEL: root, CHILD_MODEL: child}) as server:
        config = make_config(server, max_depth=2, child_model=CHILD_MODEL)
        rlm = RLM(config, tools=[inventory.stock], child_tools=[])
        result = await rlm.acompletion("ctx", "q")
    assert result.answer == "no tool here"
    assert inventory.calls == []
