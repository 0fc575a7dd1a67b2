"""Every ``rlm`` command, run as the installed console script in a real process
(and once in this one, where its garbage collector can be seen)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
from pathlib import Path

import pytest

from rlm import cli
from rlm.demo import make_haystack
from rlm.testing import OfflineModelServer
from rlm.testing.policy import TARGET_CHUNKS
from tests.cli_support import RLM, assert_one_line_error, model_env, rlm


def test_run_answers_from_a_file_as_json(server: OfflineModelServer, tmp_path: Path) -> None:
    haystack = make_haystack(5_000)
    context = tmp_path / "log.txt"
    context.write_text(haystack.text)
    trajectory = tmp_path / "run.jsonl"
    proc = rlm(
        "run",
        "--context",
        str(context),
        "--query",
        haystack.query,
        "--backend",
        "restricted",
        "--json",
        "--trajectory",
        str(trajectory),
        env=model_env(server),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["answer"] == haystack.answer
    assert result["iterations"] == 3
    assert result["usage"]["sub_calls"] == TARGET_CHUNKS
    assert result["backend"] == "restricted"
    events = [json.loads(line)["event"] for line in trajectory.read_text().splitlines()]
    assert events[0] == "run_start" and "final" in events


def test_run_reads_json_contexts_and_shows_progress(
    server: OfflineModelServer, tmp_path: Path
) -> None:
    context = tmp_path / "items.json"
    context.write_text(json.dumps([f"the magic word is {w}" for w in ["x"]] + ["noise"] * 50))
    proc = rlm(
        "run",
        "--context",
        str(context),
        "--query",
        "What is the magic word?",
        "--backend",
        "restricted",
        env=model_env(server),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "x"
    assert "iteration 1" in proc.stderr and "llm_batch" in proc.stderr


def test_run_freezes_the_start_up_heap_before_the_run(
    server: OfflineModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In process, as only there can the collector be seen: its full passes over the
    # imported modules' objects paused a run mid-batch (bench/README.md).
    context = tmp_path / "log.txt"
    context.write_text(make_haystack(500).text)
    for name, value in model_env(server).items():
        monkeypatch.setenv(name, value)
    gc.unfreeze()
    try:
        code = cli.main(
            ["run", "--context", str(context), "--query", "q?", "--backend", "restricted", "--json"]
        )
        assert code == 0
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_run_without_a_key_is_one_clear_line(tmp_path: Path) -> None:
    context = tmp_path / "c.txt"
    context.write_text("hello")
    proc = rlm("run", "--context", str(context), "--query", "q", "--model", "m")
    assert_one_line_error(proc, "OPENAI_API_KEY")


def test_run_with_a_missing_file_is_one_clear_line() -> None:
    proc = rlm("run", "--context", "/nonexistent/ctx.txt", "--query", "q")
    assert_one_line_error(proc, "/nonexistent/ctx.txt")


def test_demo_answers_offline_without_a_key() -> None:
    proc = rlm("demo", "--lines", "20000", "--backend", "restricted", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["correct"] is True
    assert result["answer"] == result["expected"]
    assert result["usage"]["sub_calls"] == TARGET_CHUNKS


def test_demo_shows_iterations_sub_calls_and_timing() -> None:
    proc = rlm("demo", "--lines", "20000", "--backend", "restricted")
    assert proc.returncode == 0, proc.stderr
    assert "offline model" in proc.stderr
    assert "iteration 3" in proc.stderr
    assert f"llm_batch: {TARGET_CHUNKS} sub-calls" in proc.stderr
    assert "correct" in proc.stderr


def test_exec_runs_one_cell_and_reports_json() -> None:
    proc = rlm("exec", "--backend", "restricted", "--json", "-", stdin="print('hi')\nx = 1 / 0\n")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["stdout"] == "hi\n"
    assert "ZeroDivisionError" in result["error"]
    assert result["timed_out"] is False
    assert result["duration_s"] >= 0


def test_exec_stops_a_runaway_cell(tmp_path: Path) -> None:
    script = tmp_path / "loop.py"
    script.write_text("while True:\n    pass\n")
    proc = rlm("exec", "--backend", "restricted", "--timeout", "1", "--json", str(script))
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["timed_out"] is True


def test_exec_sub_calls_reach_the_configured_model(server: OfflineModelServer) -> None:
    code = "print(llm_query('ping'))\nprint(llm_batch(['a', 'b']))\n"
    proc = rlm("exec", "--backend", "restricted", "-", stdin=code, env=model_env(server))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["echo: ping", "['echo: a', 'echo: b']"]


def test_exec_without_a_model_tells_the_code_why() -> None:
    code = "try:\n    llm_query('ping')\nexcept RLMCallError as e:\n    print('refused:', e)\n"
    proc = rlm("exec", "--backend", "restricted", "-", stdin=code)
    assert proc.returncode == 0, proc.stderr
    assert "refused: no model is configured" in proc.stdout


def test_doctor_reports_backends() -> None:
    proc = rlm("doctor")
    assert proc.returncode == 0, proc.stderr
    assert "restricted backend" in proc.stdout
    assert "--backend auto would use" in proc.stdout


def test_unknown_backend_is_rejected_by_the_parser() -> None:
    proc = rlm("exec", "--backend", "vm", "-", stdin="")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


@pytest.mark.docker
def test_exec_and_demo_default_to_docker_when_it_works() -> None:
    proc = rlm("exec", "--json", "-", stdin="import os\nprint(os.getuid())\n")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["backend"].startswith("docker")
    assert result["stdout"].strip() != "0"
    demo = rlm("demo", "--lines", "20000", "--json")
    assert demo.returncode == 0, demo.stderr
    assert json.loads(demo.stdout)["backend"].startswith("docker")


@pytest.mark.docker
def test_doctor_sees_docker_and_cleans_up_leftovers() -> None:
    proc = rlm("doctor", "--cleanup")
    assert proc.returncode == 0, proc.stderr
    assert "removed" in proc.stderr
    assert "--backend auto would use docker" in proc.stdout


@pytest.mark.docker
def test_ctrl_c_ends_a_run_cleanly_and_removes_its_container(tmp_path: Path) -> None:
    import signal
    import socket
    import time

    import docker

    from rlm.backends.docker import OWNER_LABEL

    engine = docker.from_env()
    context = tmp_path / "c.txt"
    context.write_text(make_haystack(2_000).text)
    # Slow root replies keep the run inside the container's lifetime when Ctrl-C lands.
    with OfflineModelServer(latency=2.0) as server:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RLM_"))}
        proc = subprocess.Popen(
            [RLM, "run", "--context", str(context), "--query", "What is x?"],
            env={**base, **model_env(server), "RLM_BACKEND": "docker"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Containers are labelled with their owner process, so other runs don't count.
            mine = {"label": f"{OWNER_LABEL}={socket.gethostname()}:{proc.pid}"}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if engine.containers.list(all=True, filters=mine):
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the run never started a container")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert engine.containers.list(all=True, filters=mine) == []
