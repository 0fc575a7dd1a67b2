"""`rlm serve` on the command line: its help lists every config key, and a bad
config file ends it at once with what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def rlm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rlm.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_help_documents_every_config_key(tmp_path: Path) -> None:
    done = rlm("serve", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for key in (
        "--config",
        "--host",
        "--port",
        "[server]",
        "database",
        "metrics_token_sha256",
        "allow_unsafe_restricted",
        "[profiles.NAME]",
        "sub_model",
        "backend",
        "[[tenants]]",
        "token_sha256",
        "max_concurrent_runs",
    ):
        assert key in done.stdout, key


def test_a_bad_config_is_refused_before_serving(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[server]\ndatabse = "x.db"\n')
    done = rlm("serve", "--config", str(config), "--port", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert "databse" in done.stderr and "Traceback" not in done.stderr
    missing = rlm("serve", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
