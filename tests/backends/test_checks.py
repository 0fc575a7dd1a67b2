"""The host's own bounds on what an out-of-process sandbox reports."""

from __future__ import annotations

from rlm.backends.checks import bound_final, cap_output


def test_output_the_sandbox_cut_itself_passes_and_more_is_cut_again() -> None:
    cut_by_runner = "x" * 100 + "\n... [output truncated: 5,000 more characters]"
    assert cap_output(cut_by_runner, 100) == (cut_by_runner, False)
    text, cut = cap_output("y" * 10_000, 100)
    assert cut and text.startswith("y" * 100) and "9,900 more characters" in text
    assert len(text) < 200


def test_a_final_over_the_limit_is_dropped_and_the_error_says_so() -> None:
    small = {"value": "ok"}
    assert bound_final(small, None, 10) == (small, None)
    final, error = bound_final({"value": "z" * 50}, "earlier", 10)
    assert final is None
    assert error is not None and error.startswith("earlier\nValueError: the final answer")


def test_a_final_nested_past_what_the_host_walks_is_dropped() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    final, error = bound_final({"value": deep}, None, 1 << 40)
    assert final is None and error is not None and "over the limit" in error
