"""``rlm view`` in a real headless Chromium: the demo's run, a run in progress, a
nested child run, a 100 MB trajectory and a hostile one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from rlm import RLM
from rlm.testing import OfflineModelServer
from tests.support import ROOT_MODEL, make_config
from tests.viewer.support import css, event, iteration, text_of, viewer, wait_for, write_events


def loaded(browser: WebDriver) -> bool:
    return browser.execute_script("return document.body.dataset.loaded === 'true'") is True


@pytest.fixture
def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RLM_", "OPENAI_"))}


@pytest.fixture
def demo_view(tmp_path: Path, clean_env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """`rlm demo --trajectory run.jsonl`, then `rlm view run.jsonl`, as a user types them."""
    trajectory = tmp_path / "run.jsonl"
    rlm = [sys.executable, "-m", "rlm.cli"]
    demo = [*rlm, "demo", "--offline", "--backend", "restricted", "--lines", "20000"]
    subprocess.run([*demo, "--trajectory", str(trajectory)], env=clean_env, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    view = subprocess.Popen(
        [*rlm, "view", str(trajectory), "--port", "0"],
        env=clean_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert view.stdout is not None
        line = view.stdout.readline()  # rlm view: run.jsonl at http://127.0.0.1:PORT/ (...)
        assert "run.jsonl at http://127.0.0.1:" in line, line + view.stderr.read()
        yield line.split(" at ")[1].split()[0], trajectory
    finally:
        view.terminate()
        view.wait(10)


def test_the_demo_run_shows_its_iterations_batch_and_answer(
    browser: WebDriver, demo_view: tuple[str, Path]
) -> None:
    url, trajectory = demo_view
    events = [json.loads(line) for line in trajectory.read_text().splitlines()]
    answer = next(e["answer"] for e in events if e["event"] == "final")
    browser.get(url)
    wait_for(lambda: loaded(browser), 15, "the page to load the file")
    iterations = css(browser, "section.run[data-depth='0'] .iteration")
    assert [i.get_attribute("data-iteration") for i in iterations] == ["1", "2", "3"]
    (batch,) = css(browser, ".batch")
    assert "64 prompts" in batch.text and "concurrency 16" in batch.text
    assert "0 failed" in batch.text and "0 retries" in batch.text
    final = css(browser, ".final .answer")[0]
    assert final.text.strip() == answer
    # Code is highlighted: llm_batch is marked as rlm's own function.
    assert "llm_batch" in [s.text for s in css(browser, ".cell .tok-rlm")]
    # The timeline has a bar for each root call, and the batch.
    assert len(css(browser, ".tl-bar.tl-call")) >= 1 and css(browser, ".tl-bar.tl-batch")
    usage = text_of(browser, ".usage")
    assert "rlm-offline-root" in usage and "rlm-offline-sub" in usage
    assert not [e for e in browser.get_log("browser") if "favicon" not in e["message"]]


def test_a_run_in_progress_updates_without_a_reload(browser: WebDriver, tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    write_events(path, [event("run_start", 0.0, query="the live question", model="root-m",
                              backend="restricted", context="a str")])  # fmt: skip
    write_events(path, iteration(1, 0.1, "print('first')", "first\n"))
    with viewer(path) as url:
        browser.get(url)
        wait_for(lambda: css(browser, ".iteration[data-iteration='1']"), 10, "iteration 1")
        browser.execute_script("window.stillHere = 'yes'")
        assert not css(browser, ".final")
        write_events(path, iteration(2, 0.5, "print('second')", "second\n"))
        second = wait_for(lambda: css(browser, ".iteration[data-iteration='2']"), 10, "it 2")
        assert "second" in second[0].text
        # The writer is mid-line: nothing shows until the line is whole.
        with path.open("a") as file:
            file.write('{"event": "final", "run_id": "r00t", "answer": "the li')
            file.flush()
            time.sleep(1.0)
            assert not css(browser, ".final")
            file.write('ve answer", "status": "answered", "t": 0.9}\n')
        final = wait_for(lambda: css(browser, ".final .answer"), 10, "the final answer")
        assert final[0].text.strip() == "the live answer"
        assert browser.execute_script("return window.stillHere") == "yes"  # no reload


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


def test_a_depth_two_child_is_nested_under_the_cell_that_started_it(
    browser: WebDriver, tmp_path: Path
) -> None:
    path = tmp_path / "tree.jsonl"
    haystack = "\n".join([f"line {i}" for i in range(200)] + ["the secret code is 4417"])
    root = [
        cell(f"part = {haystack!r}\nanswer = rlm_query('What is the secret code?', context=part)"),
        "FINAL_VAR(answer)",
    ]
    with OfflineModelServer(scripts={ROOT_MODEL: root}) as server:
        config = make_config(server, max_depth=2, child_model="root-child")
        rlm = RLM(config, trajectory_path=path)
        result = rlm.completion("the root's context", "Find the code.")
    assert result.answer == "4417"
    child_id = next(json.loads(x)["child_id"] for x in path.open() if '"child_start"' in x)
    with viewer(path) as url:
        browser.get(url)
        wait_for(lambda: loaded(browser), 10, "the page to load the file")
        (root_run,) = css(browser, "#app .tree > section.run")
        assert root_run.get_attribute("data-depth") == "0"
        # The child run's section sits in the root's first iteration, in its cell.
        nested = root_run.find_elements(
            "css selector",
            f".iteration[data-iteration='1'] .cell .child section.run[data-run-id='{child_id}']",
        )
        assert len(nested) == 1 and nested[0].get_attribute("data-depth") == "1"
        child_text = nested[0].text
        assert "What is the secret code?" in child_text and "root-child" in child_text
        assert len(nested[0].find_elements("css selector", ".iteration")) == 3
        assert "4417" in nested[0].find_element("css selector", ".child-end .answer").text
        assert (
            "4417" in css(browser, "#app .tree > section.run > .run-footer .final .answer")[0].text
        )

        # Both runs are on the timeline, the child's row below the root's.
        def labels() -> list[str]:
            return [e.text.strip() for e in css(browser, ".tl-label") if e.text.strip()]

        wait_for(lambda: len(labels()) == 3, 5, "the timeline's rows")
        assert labels() == ["time", f"run {result.session_id}", f"child {child_id}"]
        assert css(browser, ".tl-bar.tl-child")
