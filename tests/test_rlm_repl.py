"""rlm-minimal's ``RLM_REPL`` on this runtime: its scripts run unchanged."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from rlm.rlm_repl import DEFAULT_QUERY, RLM_REPL
from rlm.testing import OfflineModelServer
from tests.cli_support import clean_env
from tests.support import ROOT_MODEL, SUB_MODEL

#: An rlm-minimal main.py as its README has people write it, with the models renamed
#: to ones the offline server plays (a root model's name starts with "root").
MINIMAL_SCRIPT = """\
from rlm.rlm_repl import RLM_REPL
import random

def generate_massive_context(num_lines: int = 1_000_000, answer: str = "1298418") -> str:
    print("Generating massive context with 1M lines...")
    random_words = ["blah", "random", "text", "data", "content", "information", "sample"]
    lines = []
    for _ in range(num_lines):
        num_words = random.randint(3, 8)
        line_words = [random.choice(random_words) for _ in range(num_words)]
        lines.append(" ".join(line_words))
    magic_position = random.randint(num_lines // 3, num_lines // 2)
    lines[magic_position] = f"The magic number is {answer}"
    print(f"Magic number inserted at position {magic_position}")
    return "\\n".join(lines)

def main():
    print("Example of using RLM (REPL) with GPT-5-nano on a needle-in-haystack problem.")
    answer = str(random.randint(1000000, 9999999))
    context = generate_massive_context(num_lines=20_000, answer=answer)

    rlm = RLM_REPL(
        model="root-minimal",
        recursive_model="sub-minimal",
        enable_logging=True,
        max_iterations=10,
    )
    query = "I'm looking for a magic number. What is the magic number?"
    result = rlm.completion(context=context, query=query)
    print(f"Result: {result}. Expected: {answer}")

if __name__ == "__main__":
    main()
"""


def minimal_env(server: OfflineModelServer) -> dict[str, str]:
    # What an rlm-minimal user sets: the key (and a base URL, as the openai client
    # reads it); the backend is pinned so the test does not depend on Docker.
    return clean_env(
        {
            "OPENAI_API_KEY": "test-key",
            "OPENAI_BASE_URL": server.base_url,
            "RLM_BACKEND": "restricted",
        }
    )


def test_an_rlm_minimal_script_runs_unchanged(server: OfflineModelServer, tmp_path: Path) -> None:
    script = tmp_path / "main.py"
    script.write_text(MINIMAL_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=minimal_env(server),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result_line = proc.stdout.strip().splitlines()[-1]
    got, expected = result_line.removeprefix("Result: ").rstrip(".").split(". Expected: ")
    assert got == expected
    # enable_logging: our run reporter, on standard error.
    assert "iteration 3" in proc.stderr and "llm_batch" in proc.stderr
    assert server.stats.models["root-minimal"] == 3
    assert server.stats.models["sub-minimal"] > 0


def test_constructor_matches_rlm_minimal() -> None:
    params = inspect.signature(RLM_REPL).parameters
    defaults = {n: p.default for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD}
    assert defaults == {
        "api_key": None,
        "model": "gpt-5",
        "recursive_model": "gpt-5",
        "max_iterations": 20,
        "depth": 0,
        "enable_logging": False,
    }
    assert list(inspect.signature(RLM_REPL.completion).parameters) == [
        "self",
        "context",
        "query",
    ]


def test_arguments_reach_the_runtime(
    server: OfflineModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("RLM_BACKEND", "restricted")
    repl = RLM_REPL(api_key="k", model=ROOT_MODEL, recursive_model=SUB_MODEL, max_iterations=7)
    assert repl.config.api_key == "k"
    assert repl.config.model == ROOT_MODEL and repl.config.sub_model == SUB_MODEL
    assert repl.config.max_iterations == 7
    assert repl.config.backend == "restricted"


def test_a_fork_argument_is_ignored_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(UserWarning, match="allow_ollama_tools"):
        RLM_REPL(api_key="k", allow_ollama_tools=True)


def test_no_query_asks_rlm_minimals_default(
    server: OfflineModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    repl = RLM_REPL(api_key="k", model=ROOT_MODEL, recursive_model=SUB_MODEL)
    repl.config = repl.config.with_(backend="restricted")
    answer = repl.completion(["the color is teal", "noise"])
    assert isinstance(answer, str)
    assert repl.query == DEFAULT_QUERY
    # The offline root policy puts the query in each sub-call's question.
    assert any(DEFAULT_QUERY in prompt for prompt in server.stats.prompts)


def test_cost_summary_and_reset(
    server: OfflineModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("RLM_BACKEND", "restricted")
    monkeypatch.setenv("RLM_PRICES", f'{{"{ROOT_MODEL}": [1, 2], "{SUB_MODEL}": [0.5, 1]}}')
    repl = RLM_REPL(api_key="k", model=ROOT_MODEL, recursive_model=SUB_MODEL)
    assert repl.completion("the code is 7", "What is the code?") == "7"
    assert repl.completion("the code is 8", "What is the code?") == "8"
    summary = repl.cost_summary()
    assert summary["completions"] == 2
    assert summary["by_model"][ROOT_MODEL]["calls"] == 6
    assert summary["sub_calls"] == 2
    assert summary["cost_usd"] > 0
    repl.reset()
    assert repl.query is None
    assert repl.cost_summary()["completions"] == 0


async def test_completion_works_inside_a_running_event_loop(
    server: OfflineModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A notebook cell: rlm-minimal's blocking call works there, so this one must too.
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("RLM_BACKEND", "restricted")
    repl = RLM_REPL(api_key="k", model=ROOT_MODEL, recursive_model=SUB_MODEL)
    assert repl.completion("the city is Oslo", "What is the city?") == "Oslo"
