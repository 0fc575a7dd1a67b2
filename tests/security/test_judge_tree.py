"""The judge's checks of a run's tree can fail: each kind of overrun is caught.

The corpus's recursion and tools payloads are contained when these checks stay
quiet; here each check meets a tree that breaks it, built by hand on the host.
"""

from __future__ import annotations

from dataclasses import replace

from rlm.backends.base import CellResult
from rlm.security.corpus import Expectation, Payload
from rlm.security.harness import SUITE_LIMITS
from rlm.security.hostside import Canary
from rlm.security.judge import Observation, Rules, describe_tree, judge
from rlm.session import SessionState

RULES = Rules(
    grace=8.0,
    output_limit=4000,
    canary=Canary.new(),
    max_sub_calls=SUITE_LIMITS.max_sub_calls,
    limits=replace(SUITE_LIMITS),
    max_depth=2,
    tool_limits={"lookup": 3},
)
PAYLOAD = Payload(id="self-tree", category="selftest", code="pass")


def _root() -> SessionState:
    return SessionState(sub_model="sub", limits=SUITE_LIMITS, tenant="attacker-tenant")


def _child(parent: SessionState, depth: int) -> SessionState:
    return SessionState(
        sub_model="sub",
        limits=parent.limits,
        tenant=parent.tenant,
        tree=parent.tree,
        depth=depth,
        parent_id=parent.session_id,
    )


def _judge(
    session: SessionState,
    expect: Expectation | None = None,
    events: tuple[dict[str, str], ...] = (),
) -> list[str]:
    seen = Observation(code="pass", result=CellResult(stdout="ok"), events=list(events))
    return judge(RULES, PAYLOAD, expect or Expectation(), seen, [], session)


def test_a_tree_within_its_limits_passes() -> None:
    root = _root()
    _child(root, 1)
    root.tree.children_started = 1
    root.tree.tool_calls["lookup"] = 3
    assert _judge(root) == []
    assert "1 children (deepest run at depth 1" in describe_tree(root, [])


def test_a_run_at_the_depth_limit_is_caught() -> None:
    root = _root()
    _child(_child(root, 1), 2)
    assert any("depth 2" in p for p in _judge(root))


def test_too_many_children_and_too_many_alive_are_caught() -> None:
    root = _root()
    for _ in range(4):
        _child(root, 1)
    starts = ({"event": "child_start"},) * 3
    problems = _judge(root, events=starts)
    assert any("4 child runs started" in p for p in problems)
    assert any("3 child runs were alive at once" in p for p in problems)


def test_tool_calls_over_the_limit_are_caught() -> None:
    root = _root()
    root.tree.tool_calls["lookup"] = 4
    assert any("tool lookup ran 4 times" in p for p in _judge(root))


def test_limits_changed_in_place_are_caught() -> None:
    limits = replace(SUITE_LIMITS)
    root = SessionState(sub_model="sub", limits=limits, tenant="attacker-tenant")
    object.__setattr__(limits, "max_children", 10**9)
    assert any("limits changed" in p for p in _judge(root))


def test_work_admitted_past_max_admitted_is_caught() -> None:
    root = _root()
    root.tree.calls_admitted = 1
    problems = _judge(root, Expectation(max_admitted=0))
    assert any("admitted 1" in p for p in problems)
    assert _judge(root, Expectation(max_admitted=1)) == []
