"""``rlm security-check`` as the installed console script, in a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rlm.security import load_corpus

RLM = str(Path(sys.executable).parent / "rlm")
#: Quick categories (no timeouts to wait out) for checking the command's plumbing;
#: the whole corpus runs in test_corpus.py.
QUICK = ("network", "host")


def security_check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RLM_"))}
    return subprocess.run(
        [RLM, "security-check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def quick_args() -> list[str]:
    return [arg for c in QUICK for arg in ("--category", c)]


def expected_runs(kind: str) -> int:
    return len([p for p in load_corpus(categories=list(QUICK)) if p.applies_to(kind)])


def check_target(target: dict[str, Any], name: str, kind: str) -> None:
    assert target["backend"] == name
    health = 2 if kind == "docker" else 1  # a fresh sandbox runs; the image is unchanged
    assert target["payloads"] == expected_runs(kind) + health
    assert target["failed"] == 0, target["failures"]
    assert set(target["categories"]) == {*QUICK, "health"}
    for row in target["categories"].values():
        assert row["payloads"] == row["contained"] + row["failed"]
    assert target["host_after"]["children"] == 0


def test_json_for_the_restricted_backend() -> None:
    proc = security_check("--backend", "restricted", "--json", *quick_args())
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["failed"] == 0
    [target] = report["targets"]
    check_target(target, "restricted", "restricted")
    assert report["unavailable"] == []


@pytest.mark.docker
def test_json_for_docker_with_runsc(docker_client: Any) -> None:
    proc = security_check(
        "--backend", "docker", "--runtime", "runsc", "--image", "rlm-sandbox:latest",
        "--json", *quick_args(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    report = json.loads(proc.stdout)
    [target] = report["targets"]
    check_target(target, "docker:runsc", "docker")


@pytest.mark.docker
def test_without_backend_every_backend_here_is_attacked(docker_client: Any) -> None:
    proc = security_check("--json", "--category", "network")
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    report = json.loads(proc.stdout)
    names = [t["backend"] for t in report["targets"]]
    assert names == ["restricted", "docker:runc", "docker:runsc"]
    assert report["unavailable"] == []
    assert report["payloads"] == sum(t["payloads"] for t in report["targets"])


def test_the_table_lists_each_category() -> None:
    proc = security_check("--backend", "restricted", "--category", "host")
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    header = next(line for line in proc.stdout.splitlines() if "category" in line)
    for column in ("backend", "category", "payloads", "contained", "failed"):
        assert column in header
    assert any("restricted" in line and " host " in line for line in proc.stdout.splitlines())
    assert "all contained" in proc.stdout


def test_an_unknown_category_is_one_clear_error() -> None:
    proc = security_check("--backend", "restricted", "--category", "nope")
    assert proc.returncode == 2
    assert "unknown categories ['nope']" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_an_unavailable_backend_asked_for_fails_the_check() -> None:
    proc = security_check(
        "--backend", "docker", "--image", "rlm-no-such-image:never", "--json",
        "--category", "host",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert report["targets"] == []
    unavailable = {u["backend"]: u["reason"] for u in report["unavailable"]}
    assert set(unavailable) == {"docker:runc", "docker:runsc"}
    assert all(reason.strip() for reason in unavailable.values())
