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
    # A price table, so that the page has a cost per model to show.
    priced = {**clean_env, "RLM_PRICES": '{"rlm-offline-root": [2, 8], "rlm-offline-sub": [1, 4]}'}
    subprocess.run([*demo, "--trajectory", str(trajectory)], env=priced, check=True,
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
    # The timeline has a bar for each root call, and the batch. It is redrawn on a
    # timer, not with the tree, so the last events may reach it a moment later.
    wait_for(
        lambda: css(browser, ".tl-bar.tl-call") and css(browser, ".tl-bar.tl-batch"),
        5,
        "the timeline's root calls and batch",
    )
    # A bar on the timeline opens its iteration in the tree.
    third = css(browser, ".iteration[data-iteration='3']")[0]
    browser.execute_script("arguments[0].open = false", third)
    bars = css(browser, ".tl-bar.tl-call")
    browser.execute_script("arguments[0].click()", bars[-1])
    wait_for(lambda: third.get_attribute("open") is not None, 5, "iteration 3 to open")
    usage = text_of(browser, ".usage")
    assert "rlm-offline-root" in usage and "rlm-offline-sub" in usage
    rows = css(browser, ".usage tr")
    costs = [r.find_elements("css selector", "td")[-1].text for r in rows[1:]]
    assert len(costs) == 2 and all(c.startswith("$") for c in costs), costs
    assert browser.get_log("browser") == []  # no error, no blocked request


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
        wait_for(lambda: css(browser, ".tl-bar.tl-child"), 5, "the child's bar")


HOSTILE = [
    "<script>window.pwned = 'script'</script>",
    "<img src=x onerror=\"window.pwned = 'img'\">",
    '"><svg onload="window.pwned = \'svg\'"></svg>',
    "<iframe src=\"javascript:window.parent.pwned = 'iframe'\"></iframe>",
]


def hostile(n: int) -> str:
    return f"payload {n}: {HOSTILE[n % len(HOSTILE)]}"


def hostile_trajectory(path: Path) -> None:
    run = "r00t"
    child = "ch1ld"
    events = [
        event("run_start", 0.0, run, query=hostile(0), model=hostile(1), backend=hostile(2),
              context=hostile(3), sub_model="sub", max_depth=2),
        *iteration(1, 0.1, hostile(4), hostile(5), run=run, reply=hostile(6)),
        event("cell", 0.11, run, iteration=1, code="x = 1"),
        event("output", 0.2, run, iteration=1, stdout="", stderr=hostile(7), error=hostile(8),
              timed_out=True, duration_s=1.0, state_lost=False, truncated=False),
        event("batch_start", 0.15, run, batch=1, model=hostile(9), size=2, unique=2,
              max_concurrent=2),
        event("batch_end", 0.18, run, batch=1, model=hostile(9), size=2, done=2, failures=1,
              retries=0, cache_hits=0, dedup_hits=0, prompt_tokens=1, completion_tokens=1,
              cancelled=False, seconds=0.03),
        event("tool_call", 0.18, run, name=hostile(10)),
        event("tool_end", 0.19, run, name=hostile(10), ok=False, error=hostile(11), seconds=0.01),
        event("child_start", 0.19, run, child_id=child, model=hostile(12), prompt=hostile(13),
              context=hostile(14)),
        *iteration(1, 0.2, hostile(15), hostile(16), run=child, parent=run),
        event("child_end", 0.3, run, child_id=child, status="failed", stopped=None,
              answer=hostile(17), error=hostile(18), failure="provider", seconds=0.1, usage=None),
        event("limit_reached", 0.4, run, limit=hostile(19), iteration=1),
        event(hostile(20), 0.5, run, detail=hostile(21)),
        event("final", 0.6, run, answer=hostile(22), forced=False, status="limit", limits={},
              stopped=hostile(23)),
        event("usage", 0.6, run, sub_calls=1, total_tokens=2, cost_usd=None,
              by_model={hostile(24): {"calls": 1}}, by_depth={"0": {hostile(24): {"calls": 1}}}),
    ]  # fmt: skip
    write_events(path, events)
    with path.open("a") as file:
        file.write(hostile(25) + "\n")  # not even JSON


def test_a_hostile_trajectory_is_shown_as_text_and_never_run(
    browser: WebDriver, tmp_path: Path
) -> None:
    path = tmp_path / "hostile.jsonl"
    hostile_trajectory(path)
    with viewer(path) as url:
        browser.get(url)
        wait_for(lambda: loaded(browser), 10, "the page to load the file")
        wait_for(lambda: css(browser, ".tl-bar"), 5, "the timeline")
        time.sleep(0.5)  # time for an onerror or onload to fire, were there one
        assert browser.execute_script("return window.pwned") is None
        smuggled = "#app img, #app script, #app svg, #app iframe, #app [onerror], #app [onload]"
        assert browser.execute_script(f"return document.querySelectorAll('{smuggled}').length") == 0
        shown = text_of(browser)
        missing = [n for n in range(26) if n != 25 and hostile(n) not in shown]
        assert missing == [], missing
        assert "line 20 is unreadable: not JSON" in shown  # the line that is not JSON, named
        final = css(browser, "section.run[data-depth='0'] > .run-footer .final")[0]
        assert final.find_element("css selector", ".answer").text.strip() == hostile(22)
        # What ended the run badly stands out.
        assert hostile(19) in text_of(browser, ".run-trouble") or "limit" in text_of(
            browser, ".run-trouble"
        )
        assert "bad" in (final.get_attribute("class") or "")
        # And the policy had nothing to block: no script ever tried to run.
        logs = [e["message"] for e in browser.get_log("browser")]
        assert not [m for m in logs if "Content Security Policy" in m or "pwned" in m], logs


def big_trajectory(path: Path, iterations: int, output: str) -> None:
    """A run of ``iterations`` iterations, each printing ``output``, written fast:
    each event's JSON is made once, with a placeholder for the iteration number."""
    templates = [json.dumps(e).replace("424242", "{n}").replace("{", "{{").replace("}", "}}")
                 .replace("{{n}}", "{n}") for e in iteration(424242, 0.5, "print(rows[424242])",
                 output)]  # fmt: skip
    with path.open("w") as file:
        file.write(json.dumps(event("run_start", 0.0, query="a long run", model="root-m")) + "\n")
        for n in range(1, iterations + 1):
            file.write("\n".join(t.format(n=n) for t in templates) + "\n")
        file.write(json.dumps(event("final", 0.6, answer="done", status="answered")) + "\n")


@pytest.mark.parametrize(
    ("iterations", "output"),
    [
        # 1,500 outputs of 68 KB each: pages of a few events, outputs folded to previews.
        (1500, "".join(f"row {i:05d} " + "x" * 56 + "\n" for i in range(1060))),
        # 110,000 iterations of short events: pages of 2,000 events, 330,000 in all.
        (110_000, "y" * 250 + "\n"),
    ],
    ids=["long-outputs", "many-events"],
)
def test_a_100_megabyte_trajectory_opens_without_freezing_the_page(
    browser: WebDriver, tmp_path: Path, iterations: int, output: str
) -> None:
    path = tmp_path / "big.jsonl"
    big_trajectory(path, iterations, output)
    assert path.stat().st_size > 100_000_000
    # A timer in the page from its first moment: a frozen page stops it ticking.
    ticker = browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "window.gaps = []; let last = performance.now();"
            "setInterval(() => { const now = performance.now();"
            " window.gaps.push(now - last); last = now; }, 25);"
        },
    )
    try:
        with viewer(path) as url:
            started = time.monotonic()
            browser.get(url)
            wait_for(lambda: css(browser, ".iteration[data-iteration='1'] .output"), 10, "it 1")
            first = time.monotonic() - started
            wait_for(lambda: loaded(browser), 60, "the whole file")
            whole = time.monotonic() - started
            gaps = browser.execute_script("return window.gaps")
            assert first < 5, first
            assert max(gaps) < 1000, max(gaps)  # the page kept ticking: never frozen
            assert len(gaps) > whole * 10  # and the timer did run all along
            # Iterations are drawn a hundred at a time.
            assert len(css(browser, ".iteration")) == 100
            more = css(browser, "button.more-iterations")[0]
            assert f"of {iterations - 100:,} iterations" in more.text
            more.click()
            wait_for(lambda: len(css(browser, ".iteration")) == 200, 5, "more iterations")
            assert css(browser, ".final .answer")[0].text.strip() == "done"
            # The page holds previews: a long output is folded, the rest loaded on demand.
            out = css(browser, ".iteration[data-iteration='1'] .output")[0]
            if len(output) > 5000:
                assert len(out.text) < 5000
                out.find_element("css selector", "button.more").click()
                wait_for(lambda: "row 01059" in out.text, 10, "the whole output")
            else:
                assert out.text.strip() == output.strip()
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", ticker)


def test_the_turns_of_a_session_show_as_runs_of_their_own(
    browser: WebDriver, tmp_path: Path
) -> None:
    path = tmp_path / "session.jsonl"
    with OfflineModelServer() as server:
        session = RLM(make_config(server), trajectory_path=path).session()
        with session:
            session.completion("the code is 42\nx", "What is the code?")
            session.completion("the code is 43\ny", "What is the code?")
    with viewer(path) as url:
        browser.get(url)
        wait_for(lambda: loaded(browser), 10, "the page to load the file")
        runs = css(browser, "#app .tree > section.run")
        assert [r.find_element("css selector", ".run-kind").text for r in runs] == ["run", "turn 2"]
        answers = [r.find_element("css selector", ".final .answer").text.strip() for r in runs]
        assert answers == ["42", "43"]
        wait_for(lambda: len(css(browser, ".tl-row.depth-0")) == 2, 5, "a timeline row per turn")
