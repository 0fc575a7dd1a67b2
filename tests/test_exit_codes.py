"""`rlm run`'s exit codes and ``--json`` status, each produced for real: the CLI as a
process, the offline model server over HTTP, and Docker where the fault is Docker's."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from rlm.cli import EXIT_CODES_HELP
from rlm.demo import make_haystack
from rlm.result import EXIT_CODES, RUN_STATUSES
from rlm.testing import Fault, OfflineModelServer
from tests.cli_support import (
    assert_one_line_error,
    model_env,
    owner_filter,
    read_events,
    rlm,
    start_model_server,
    start_rlm,
    wait_for_event,
    wait_reading_stdin,
)
from tests.support import ROOT_MODEL, SUB_MODEL

REPO = Path(__file__).resolve().parents[1]
#: Seconds after `rlm run` exits by which none of its containers may be left.
CONTAINER_LIMIT = 10.0


@pytest.fixture
def haystack_file(tmp_path: Path) -> Path:
    path = tmp_path / "log.txt"
    path.write_text(make_haystack(2_000).text)
    return path


def run_json(context: Path, *flags: str, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    proc = rlm(
        "run", "--context", str(context), "--backend", "restricted", "--json", *flags, env=env
    )
    return proc.returncode, json.loads(proc.stdout), proc.stderr


# -- a run that finished ----------------------------------------------------------------


def test_an_answer_exits_0(server: OfflineModelServer, haystack_file: Path) -> None:
    query = make_haystack(2_000).query
    code, result, _ = run_json(haystack_file, "--query", query, env=model_env(server))
    assert (code, result["status"], result["exit_code"]) == (0, "answered", 0)
    assert result["forced"] is False and result["limits"] == {}
    assert result["answer"] == make_haystack(2_000).answer


def test_a_forced_answer_exits_3(server: OfflineModelServer, haystack_file: Path) -> None:
    # One turn: the policy looks at the context; made to answer, it has no FINAL.
    flags = ("--query", "What is the code?", "--max-iterations", "1")
    code, result, _ = run_json(haystack_file, *flags, env=model_env(server))
    assert (code, result["status"], result["exit_code"]) == (3, "forced", 3)
    assert result["forced"] is True


def test_a_forced_answer_is_said_on_stderr(server: OfflineModelServer, haystack_file: Path) -> None:
    proc = rlm(
        "run",
        "--context",
        str(haystack_file),
        "--query",
        "What is the code?",
        "--backend",
        "restricted",
        "--max-iterations",
        "1",
        env=model_env(server),
    )
    assert proc.returncode == 3, proc.stderr
    assert "forced to answer at the iteration bound" in proc.stderr


def test_a_missing_final_var_exits_3(server: OfflineModelServer, haystack_file: Path) -> None:
    # Two turns: made to answer, the policy names `answer`, which no cell defined.
    flags = ("--query", "What is the code?", "--max-iterations", "2")
    code, result, _ = run_json(haystack_file, *flags, env=model_env(server))
    assert (code, result["status"], result["exit_code"]) == (3, "no_answer", 3)
    assert result["answer"] == "(no answer: FINAL_VAR named a missing variable 'answer')"


def test_a_sub_call_budget_reached_exits_4(server: OfflineModelServer, haystack_file: Path) -> None:
    # The policy's llm_batch of 64 is refused whole: its answer lacks that work.
    flags = ("--query", "What is the code?", "--max-sub-calls", "10", "--max-iterations", "3")
    code, result, _ = run_json(haystack_file, *flags, env=model_env(server))
    assert (code, result["status"], result["exit_code"]) == (4, "limit", 4)
    assert result["limits"]["sub_calls"] > 10  # the whole batch, refused before it ran
    assert result["usage"]["sub_calls"] == 0


def test_a_token_budget_spent_exits_4_and_says_so(
    server: OfflineModelServer, haystack_file: Path
) -> None:
    proc = rlm(
        "run",
        "--context",
        str(haystack_file),
        "--query",
        "What is the code?",
        "--backend",
        "restricted",
        "--max-tokens",
        "1",
        env=model_env(server),
    )
    assert proc.returncode == 4, proc.stderr
    # The first root reply spends the budget: the run ends without another call.
    assert "the run stopped at its max_tokens limit" in proc.stderr
    assert "the answer may lack that work" in proc.stderr


def test_a_limit_outranks_a_forced_answer(server: OfflineModelServer, haystack_file: Path) -> None:
    flags = ("--query", "What is the code?", "--max-sub-calls", "1", "--max-iterations", "2")
    code, result, _ = run_json(haystack_file, *flags, env=model_env(server))
    assert (code, result["status"], result["forced"]) == (4, "limit", True)
    assert result["stopped"] == "max_sub_calls"


def test_a_run_limit_flag_stops_the_run_and_json_names_it(
    server: OfflineModelServer, haystack_file: Path
) -> None:
    # The demo policy's second turn sends a batch; four children would be allowed
    # by --max-depth 2, but the wall time allows no second root call at 0.5 s a call.
    server.latency = 0.5
    flags = ("--query", "What is the code?", "--max-depth", "2", "--max-wall-time", "0.8")
    code, result, stderr = run_json(haystack_file, *flags, env=model_env(server))
    assert (code, result["status"], result["stopped"]) == (4, "limit", "max_wall_time_s"), stderr
    assert result["wall_time_s"] < 0.8 + 30  # within the forced turn's grace
    assert result["children"] == 0


# -- a run that failed ------------------------------------------------------------------


def test_no_model_is_a_config_error_2_also_in_json(haystack_file: Path) -> None:
    proc = rlm("run", "--context", str(haystack_file), "--query", "q", "--json")
    assert_one_line_error(proc, "RLM_MODEL", code=2)
    report = json.loads(proc.stdout)
    assert report["status"] == "config_error" and report["exit_code"] == 2
    assert "RLM_MODEL" in report["error"]


def test_a_bad_flag_value_is_a_config_error_2(haystack_file: Path) -> None:
    proc = rlm("run", "--context", str(haystack_file), "--query", "q", "--max-sub-calls", "x")
    assert proc.returncode == 2 and "invalid int value" in proc.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-depth", "0", "max_depth must be at least 1"),
        ("--max-wall-time", "-1", "--max-wall-time must be 0 or more"),
        ("--max-cost-usd", "0", "max_cost_usd must be positive"),
    ],
)
def test_a_bad_run_limit_is_a_config_error_2(
    haystack_file: Path, flag: str, value: str, message: str
) -> None:
    env = {"RLM_MODEL": "m", "OPENAI_API_KEY": "k"}
    proc = rlm("run", "--context", str(haystack_file), "--query", "q", flag, value, env=env)
    assert_one_line_error(proc, message, code=2)


def test_a_refused_root_model_is_a_provider_error_5(haystack_file: Path) -> None:
    with OfflineModelServer() as server:
        server.add_fault(Fault(status=401, model=ROOT_MODEL, times=10))
        proc = rlm(
            "run",
            "--context",
            str(haystack_file),
            "--query",
            "q",
            "--backend",
            "restricted",
            "--json",
            env=model_env(server),
        )
    line = assert_one_line_error(proc, "API key", code=5)
    assert "OPENAI_API_KEY" in line
    report = json.loads(proc.stdout)
    assert (report["status"], report["exit_code"]) == ("provider_error", 5)


def test_a_model_server_dying_mid_batch_is_one_line_and_exit_5(tmp_path: Path) -> None:
    # A short context makes a narrow batch: each item's retries end within seconds.
    haystack_file = tmp_path / "short.txt"
    haystack_file.write_text(make_haystack(8).text)
    server, url = start_model_server(hang=SUB_MODEL)
    trajectory = tmp_path / "run.jsonl"
    try:
        run = start_rlm(
            "run",
            "--context",
            str(haystack_file),
            "--query",
            "What is the secret code?",
            "--backend",
            "restricted",
            "--trajectory",
            str(trajectory),
            env=model_env(url),
        )
        wait_for_event(trajectory, "batch_start", run)
        server.kill()
        server.wait()
        _, err = run.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert run.returncode == 5, err
    lines = [line for line in err.splitlines() if line.startswith("rlm:")]
    assert len(lines) == 1 and "cannot reach the model server" in lines[0], err
    assert "Traceback" not in err
    events = read_events(trajectory)
    batch = next(e for e in events if e["event"] == "batch_end")
    assert batch["failures"] == batch["size"]  # each item failed, none hung
    assert sum(1 for e in events if e["event"] == "root_retry") == 3  # bounded root retries


@pytest.mark.docker
def test_a_missing_sandbox_image_is_a_sandbox_error_6(
    docker_client: Any, server: OfflineModelServer, haystack_file: Path
) -> None:
    proc = rlm(
        "run",
        "--context",
        str(haystack_file),
        "--query",
        "q",
        "--backend",
        "docker",
        "--json",
        env={**model_env(server), "RLM_IMAGE": "rlm-no-such-image:missing"},
    )
    assert_one_line_error(proc, "rlm-no-such-image:missing", code=6)
    report = json.loads(proc.stdout)
    assert (report["status"], report["exit_code"]) == ("sandbox_error", 6)


# -- interrupted ------------------------------------------------------------------------


def _interrupt_mid_batch(
    backend: str, signum: signal.Signals, context: Path, tmp_path: Path, *, twice: bool = False
) -> tuple[subprocess.Popen[str], str, str, float, float | None, list[dict[str, Any]]]:
    """`rlm run` signalled while its llm_batch is in flight: the process, its output,
    seconds to its exit, seconds until its last container was gone, its trajectory."""
    trajectory = tmp_path / "run.jsonl"
    with OfflineModelServer() as server:
        # Sub-calls hang, so the batch is in flight when the signal lands.
        server.add_fault(Fault(status=0, model=SUB_MODEL, times=10**9))
        run = start_rlm(
            "run",
            "--context",
            str(context),
            "--query",
            "What is the secret code?",
            "--backend",
            backend,
            "--json",
            "--trajectory",
            str(trajectory),
            env=model_env(server),
        )
        try:
            wait_for_event(trajectory, "batch_start", run)
            deadline = time.monotonic() + 30
            while server.stats.in_flight == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.stats.in_flight > 0, "the batch was never in flight"
            sent = time.monotonic()
            run.send_signal(signum)
            if twice:  # a second signal while the clean-up runs
                time.sleep(0.01)
                run.send_signal(signum)
            out, err = run.communicate(timeout=60)
            exited = time.monotonic() - sent
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    gone: float | None = None
    if backend == "docker":
        import docker

        engine = docker.from_env()
        try:
            while time.monotonic() - sent < exited + CONTAINER_LIMIT:
                if not engine.containers.list(all=True, filters=owner_filter(run.pid)):
                    gone = time.monotonic() - sent
                    break
                time.sleep(0.05)
        finally:
            engine.close()
    return run, out, err, exited, gone, read_events(trajectory)


def _assert_interrupted(run: subprocess.Popen[str], out: str, err: str, signum: int) -> None:
    name = signal.Signals(signum).name
    assert run.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert f"rlm: interrupted by {name}: the run was cancelled and its sandbox closed" in err
    report = json.loads(out)
    assert report["status"] == "interrupted" and report["exit_code"] == 128 + signum
    assert report["signal"] == name


@pytest.mark.docker
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_mid_batch_removes_the_container_docker(
    docker_client: Any, signum: signal.Signals, haystack_file: Path, tmp_path: Path
) -> None:
    run, out, err, exited, gone, events = _interrupt_mid_batch(
        "docker", signum, haystack_file, tmp_path
    )
    _assert_interrupted(run, out, err, signum)
    assert gone is not None, f"a container of pid {run.pid} was left {CONTAINER_LIMIT:g} s on"
    print(f"{signum.name}: exit {exited:.2f} s, container gone {gone:.2f} s after the signal")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and "batch_start" in kinds and "final" not in kinds


@pytest.mark.docker
def test_a_second_signal_during_the_clean_up_leaves_no_container(
    docker_client: Any, haystack_file: Path, tmp_path: Path
) -> None:
    run, out, err, _, gone, _ = _interrupt_mid_batch(
        "docker", signal.SIGINT, haystack_file, tmp_path, twice=True
    )
    _assert_interrupted(run, out, err, signal.SIGINT)
    assert gone is not None


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"]
)
def test_a_stop_signal_mid_batch_restricted(
    signum: signal.Signals, haystack_file: Path, tmp_path: Path
) -> None:
    run, out, err, _, _, events = _interrupt_mid_batch(
        "restricted", signum, haystack_file, tmp_path
    )
    _assert_interrupted(run, out, err, signum)
    assert "batch_start" in [e["event"] for e in events]


def test_sigterm_before_the_run_starts_is_one_line_and_143(server: OfflineModelServer) -> None:
    run = start_rlm("run", "--context", "-", "--query", "q", env=model_env(server))
    try:
        wait_reading_stdin(run)  # stdin held open: rlm waits for its context
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 143, err
    assert err.strip() == "rlm: interrupted by SIGTERM"


# -- documented -------------------------------------------------------------------------


def test_every_status_has_an_exit_code_and_is_documented() -> None:
    assert set(EXIT_CODES) == RUN_STATUSES
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for status, code in EXIT_CODES.items():
        assert re.search(rf"\b{code}\b.*`{status}`", readme), f"README lacks {code} {status}"
        assert re.search(rf"\b{code}\b.*\b{status}\b", EXIT_CODES_HELP), status
    for code in (130, 143, 129):
        assert str(code) in readme and str(code) in EXIT_CODES_HELP


def test_help_shows_the_exit_codes() -> None:
    for args in (["--help"], ["run", "--help"]):
        proc = rlm(*args)
        assert proc.returncode == 0
        assert "exit codes of `rlm run`" in proc.stdout
        assert "provider_error" in proc.stdout and "130/143/129" in proc.stdout
