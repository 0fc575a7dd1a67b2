"""Judging one payload: what it produced, against what its expectation allows.

Pure functions of what the harness observed, so the rules can be read (and
changed) apart from the machinery that runs the payloads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from rlm.backends.base import CellResult
from rlm.errors import RLMError
from rlm.events import Event
from rlm.security.corpus import Expectation, Payload
from rlm.security.hostside import Canary
from rlm.session import SessionLimits, SessionState

#: Seconds reading a variable back may take: above the backends' own bounds (10 s for
#: restricted, 30 s for Docker, after which they restart), so only a hang is flagged.
VARIABLE_READ_LIMIT = 35.0
#: What a cell may print beyond the output limit (the truncation notice).
_OUTPUT_SLACK = 200


@dataclass(frozen=True)
class Rules:
    """The bounds every payload is held to on one target."""

    #: Seconds a cell may run past its timeout before it counts as not stopped.
    grace: float
    #: Characters of output each cell may show.
    output_limit: int
    #: The secret that must appear nowhere the sandbox could put it.
    canary: Canary
    #: The session's sub-call budget (None: unbounded).
    max_sub_calls: int | None
    #: The limits the host bound the run to; nothing the sandbox does may change them.
    limits: SessionLimits | None = None
    #: Levels of runs allowed: every run of the tree is at a depth below it.
    max_depth: int = 1
    #: Each host tool's call limit per run.
    tool_limits: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Observation:
    """What running one payload produced, as the harness saw it."""

    code: str = ""
    result: CellResult | None = None
    raised: BaseException | None = None
    overran: bool = False
    seconds: float = 0.0
    variables: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    #: The run's events (its children's too), in the order they happened.
    events: list[Event] = field(default_factory=list)


def shown_text(result: CellResult | None, raised: BaseException | None, code: str = "") -> str:
    """Everything the cell showed, minus the traceback's echo of the cell's own source.

    A traceback quotes the line that failed, so ``print("ESCAPED", ...)`` failing would
    otherwise look like the attack got through; a line the cell printed or raised is
    never a verbatim line of its source unless the payload arranges it, and none does.
    """
    source = {line.strip() for line in code.splitlines() if line.strip()}
    parts = []
    if result is not None:
        parts += [result.stdout, result.stderr]
        error = result.error or ""
        parts += [line for line in error.splitlines() if line.strip() not in source]
    if raised is not None:
        parts.append(str(raised))
    return "\n".join(parts)


def judge(
    rules: Rules,
    payload: Payload,
    expect: Expectation,
    seen: Observation,
    leaks: list[str],
    session: SessionState,
) -> list[str]:
    """Everything wrong with what a payload produced; empty when contained."""
    problems: list[str] = []
    result, raised = seen.result, seen.raised
    limit = payload.timeout + rules.grace
    for name in seen.unreadable:
        problems.append(
            f"reading variable {name!r} back did not finish in {VARIABLE_READ_LIMIT:g} s"
        )
    if seen.overran:
        problems.append(
            f"the cell was not stopped within its limit: still running after "
            f"{seen.seconds:.1f} s (timeout {payload.timeout:g} s + grace {rules.grace:g} s)"
        )
    elif seen.seconds > limit:
        problems.append(
            f"the cell took {seen.seconds:.1f} s, over its limit of {payload.timeout:g} s "
            f"+ {rules.grace:g} s grace"
        )
    if raised is not None and not isinstance(raised, RLMError):
        problems.append(f"the backend crashed: {type(raised).__name__}: {str(raised)[:300]}")

    # What the cell came to.
    errored = raised is not None or (result is not None and result.error is not None)
    timed_out = result is not None and result.timed_out
    restarted = result is not None and result.state_lost
    message = str(raised) if raised is not None else (result.error or "" if result else "")
    outcome = expect.outcome
    if not seen.overran:
        if outcome == "ok" and errored:
            problems.append(f"expected the cell to succeed, it failed: {message[-300:]}")
        elif outcome == "error" and (not errored or timed_out):
            problems.append(
                "expected an error, the cell timed out" if timed_out else "expected an error"
            )
        elif outcome == "timeout" and not timed_out:
            problems.append("expected the cell to be stopped by its timeout")
        elif outcome == "limited":
            if not (errored or timed_out or restarted):
                problems.append("expected a limit to stop the cell, it ran to its end")
            elif not message.strip():
                problems.append("a limit stopped the cell without saying why")
    if expect.error_match is not None and errored and not re.search(expect.error_match, message):
        problems.append(f"the error does not match {expect.error_match!r}")
    if expect.state_lost is not None and restarted != expect.state_lost:
        problems.append(f"expected state_lost={expect.state_lost}, got {restarted}")

    stdout = result.stdout if result is not None else ""
    all_text = shown_text(result, raised, seen.code)
    for token in expect.forbid:
        if token and token in all_text:
            problems.append(f"the output shows {token!r}: the attack got through")
    if not seen.overran and raised is None:
        for token in expect.stdout_has:
            if token not in stdout:
                problems.append(f"stdout lacks {token!r}")
    for token in expect.stdout_lacks:
        if token in stdout:
            problems.append(f"stdout contains {token!r}")
    if result is not None:
        cap = rules.output_limit + _OUTPUT_SLACK
        for name in ("stdout", "stderr"):
            size = len(getattr(result, name))
            if size > cap:
                problems.append(f"{name} has {size:,} characters, over the cap of {cap:,}")
        if expect.max_stdout is not None and len(stdout) > expect.max_stdout:
            problems.append(f"stdout has {len(stdout):,} characters, over {expect.max_stdout:,}")
        if expect.truncated is not None and result.truncated != expect.truncated:
            problems.append(f"expected truncated={expect.truncated}, got {result.truncated}")
        if not math.isfinite(result.duration_s) or result.duration_s < 0:
            problems.append(f"the backend reported a bogus duration {result.duration_s!r}")

    # The canary, wherever the sandbox could have put it.
    places = {"stdout": stdout}
    if result is not None:
        places.update(stderr=result.stderr, error=result.error or "")
    if raised is not None:
        places["exception"] = str(raised)
    places.update({f"variable {k}": v for k, v in seen.variables.items()})
    for where, text in places.items():
        if rules.canary.found_in(text):
            problems.append(f"the canary secret leaked into {where}")
    for leak in leaks:
        problems.append(f"the canary secret crossed the bridge in a {leak}")
    if session.tenant != "attacker-tenant":
        problems.append(f"the session's tenant changed to {session.tenant!r}")
    budget = rules.max_sub_calls
    if budget is not None and session.calls_admitted > budget:
        problems.append(f"{session.calls_admitted} sub-calls admitted, over {budget}")
    problems += _tree_problems(rules, expect, session, seen.events)
    return problems


def _tree_problems(
    rules: Rules, expect: Expectation, session: SessionState, events: list[Event]
) -> list[str]:
    """What the run's tree shows: depth, children, tool calls, limits, all host-side."""
    problems: list[str] = []
    most_live = _most_alive(events)
    tree = session.tree
    deepest = max((run.depth for run in tree.sessions), default=0)
    if deepest >= rules.max_depth:
        problems.append(f"a run reached depth {deepest}; the limit allows {rules.max_depth - 1}")
    if session.depth != 0 or session.parent_id is not None:
        problems.append("the root run's own depth or parent changed")
    children = sum(1 for run in tree.sessions if run.depth > 0)
    limits = rules.limits
    if limits is not None:
        if session.limits != limits or tree.limits != limits:
            problems.append("the run's limits changed while it ran")
        cap = limits.max_children
        if cap is not None and max(children, tree.children_started) > cap:
            problems.append(f"{children} child runs started, over the limit of {cap}")
        if most_live > limits.max_live_children:
            problems.append(
                f"{most_live} child runs were alive at once, over the limit of "
                f"{limits.max_live_children}"
            )
    for name, calls in tree.tool_calls.items():
        cap = rules.tool_limits.get(name)
        if cap is not None and calls > cap:
            problems.append(f"tool {name} ran {calls} times, over its limit of {cap}")
    admitted = tree.calls_admitted + tree.children_started + sum(tree.tool_calls.values())
    if expect.max_admitted is not None and admitted > expect.max_admitted:
        problems.append(
            f"the host admitted {admitted} sub-calls, children and tool calls, "
            f"over the {expect.max_admitted} this payload may get"
        )
    return problems


#: Host modules and classes model code in an in-process backend can get hold of; none
#: of their public attributes may be rebound by a payload.
_WATCHED_MODULES = (
    "builtins",
    "json",
    "re",
    "math",
    "string",
    "collections",
    "itertools",
    "functools",
    "statistics",
    "textwrap",
    "datetime",
    "operator",
    "random",
    "rlm_sandbox.api",
)


def host_integrity() -> dict[str, int]:
    """Identity of every public attribute of the watched modules and API classes."""
    import importlib

    from rlm_sandbox import api

    marks: dict[str, int] = {}
    for name in _WATCHED_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr, value in list(vars(module).items()):
            if not attr.startswith("_"):
                marks[f"{name}.{attr}"] = id(value)
    for cls in (api.LLMError, api.RLMCallError, str, list, dict, object):
        for attr, value in list(vars(cls).items()):
            marks[f"{cls.__qualname__}.{attr}"] = id(value)
    return marks


def integrity_changes(before: dict[str, int], after: dict[str, int]) -> list[str]:
    changed = [k for k, v in after.items() if before.get(k) != v]
    return sorted(changed + [k for k in before if k not in after])


def describe(seen: Observation) -> str:
    """One line of what a payload produced, for the report."""
    bits = [f"{seen.seconds:.2f}s"]
    if seen.raised is not None:
        bits.append(f"raised {type(seen.raised).__name__}: {str(seen.raised)[:300]}")
    r = seen.result
    if r is not None:
        flags = [n for n in ("timed_out", "state_lost", "truncated") if getattr(r, n)]
        if flags:
            bits.append(",".join(flags))
        if r.stdout:
            bits.append(f"stdout={r.stdout[:300]!r}")
        if r.error:
            last = r.error.strip().splitlines()[-1] if r.error.strip() else r.error
            bits.append(f"error={last[:300]!r}")
    return " | ".join(bits)


def _most_alive(events: list[Event]) -> int:
    """The most child runs alive at one time, by their start and end events."""
    live = most = 0
    for event in events:
        kind = event.get("event")
        live += (kind == "child_start") - (kind == "child_end")
        most = max(most, live)
    return most


def describe_tree(session: SessionState, events: list[Event]) -> str:
    """The run's tree for the report, when it is more than the root run's sub-calls."""
    tree = session.tree
    children = [run for run in tree.sessions if run.depth > 0]
    if not children and not tree.tool_calls:
        return ""
    deepest = max(run.depth for run in tree.sessions)
    tools = ",".join(f"{name}={n}" for name, n in sorted(tree.tool_calls.items()))
    return (
        f" | tree: {len(children)} children (deepest run at depth {deepest}, "
        f"at most {_most_alive(events)} alive), "
        f"{tree.calls_admitted} sub-calls, tool calls {tools or 'none'}"
    )
