"""The functions model code sees, over a fake transport."""

from __future__ import annotations

import gc
import sys
from typing import Any

import pytest
from rlm_sandbox.api import RLMCallError, make_functions


class CellEnds:
    """A transport that serves a stream until the cell ends, then refuses every call
    (as the hosts do once the cell that made the stream is over)."""

    def __init__(self) -> None:
        self.cell_running = True
        self.calls: list[str] = []

    def __call__(self, method: str, params: dict[str, Any]) -> Any:
        self.calls.append(method)
        if not self.cell_running:
            raise RLMCallError("sub-calls are only available while a cell runs")
        if method == "stream_open":
            return {"stream": 1}
        if method == "stream_next":
            return {"items": [[0, {"text": "first"}]], "done": False}
        return None


def test_a_stream_closed_after_its_cell_ended_raises_nothing() -> None:
    transport = CellEnds()
    answers = make_functions(transport)["llm_batch_iter"](["a", "b", "c"])
    assert next(answers) == (0, "first")
    transport.cell_running = False
    answers.close()  # raised RLMCallError from the generator's finally
    assert transport.calls[-1] == "stream_close"


def test_a_stream_collected_after_its_cell_ended_warns_of_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    transport = CellEnds()
    answers = make_functions(transport)["llm_batch_iter"](["a", "b"])
    next(answers)
    transport.cell_running = False
    del answers
    gc.collect()
    assert transport.calls[-1] == "stream_close"
    assert unraisable == []


def test_a_stream_left_in_its_cell_is_still_closed_on_the_host() -> None:
    transport = CellEnds()
    answers = make_functions(transport)["llm_batch_iter"](["a", "b"])
    next(answers)
    answers.close()
    assert transport.calls == ["stream_open", "stream_next", "stream_close"]


def test_other_refusals_while_reading_still_reach_model_code() -> None:
    transport = CellEnds()
    answers = make_functions(transport)["llm_batch_iter"](["a", "b"])
    next(answers)
    transport.cell_running = False
    with pytest.raises(RLMCallError, match="while a cell runs"):
        next(answers)
