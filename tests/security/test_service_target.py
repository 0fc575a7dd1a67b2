"""`rlm security-check --service`: the HTTP attacks against a real `rlm serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm.testing import OfflineModelServer
from tests.service.api_support import SCRIPTS, TOKENS, Service


@pytest.fixture(scope="module")
def model_server() -> Iterator[OfflineModelServer]:
    with OfflineModelServer(scripts=SCRIPTS) as server:
        yield server


def started(folder: Path, model_server: OfflineModelServer, extra: str) -> Service:
    service = Service(folder, model_server, str(folder / "rlm.db"))
    text = service.config.read_text().replace("[server]\n", "[server]\n" + extra, 1)
    service.config.write_text(text)
    return service.start()


def security_check(service: Service, *more: str) -> tuple[int, dict[str, dict[str, object]]]:
    command = [sys.executable, "-m", "rlm.cli", "security-check", "--json"]
    command += ["--service", service.url, "--token", TOKENS["acme"], *more]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    report = json.loads(done.stdout)
    assert report["ok"] == (done.returncode == 0)
    return done.returncode, {check["name"]: check for check in report["checks"]}


def test_a_guarded_service_passes_every_check(
    model_server: OfflineModelServer, tmp_path: Path
) -> None:
    service = started(tmp_path, model_server, "auth_failures_per_minute = 3\nbody_timeout_s = 1\n")
    try:
        code, checks = security_check(
            service, "--other-token", TOKENS["globex"], "--slow-bound", "4"
        )
    finally:
        assert service.stop() == 0
    assert code == 0, checks
    assert set(checks) >= {
        "missing token",
        "wrong token",
        "malformed JSON",
        "oversized body",
        "slow body",
        "another tenant's run",
        "token guessing",
        "secrets never echoed",
    }
    assert "429 after 3 wrong tokens" in str(checks["token guessing"]["detail"])
    assert "[404, 404, 404]" in str(checks["another tenant's run"]["detail"])


def test_a_service_without_the_guessing_limit_fails_the_check(
    model_server: OfflineModelServer, tmp_path: Path
) -> None:
    service = started(
        tmp_path, model_server, 'auth_failures_per_minute = "unlimited"\nbody_timeout_s = 1\n'
    )
    try:
        code, checks = security_check(service, "--slow-bound", "4")
    finally:
        assert service.stop() == 0
    assert code == 1
    assert checks["token guessing"]["ok"] is False
    assert "none refused" in str(checks["token guessing"]["detail"])
    assert all(check["ok"] for name, check in checks.items() if name != "token guessing")
