"""What starting ``rlm`` imports: commands that call no model never load ``openai``.

Importing the SDK costs about 0.6 s, most of what ``import rlm`` used to cost
(bench/README.md, "Import cost"). Each check runs in a fresh interpreter, since this
one may have imported anything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlm.testing import OfflineModelServer
from tests.cli_support import clean_env, model_env

#: Runs ``rlm.cli.main(argv)`` and prints the heavy modules it left loaded.
_PROBE = """
import json, sys
from rlm.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("openai", "httpx", "pydantic") if m in sys.modules)
print("\\n" + json.dumps({"code": code, "heavy": heavy}))
"""


def probe(*argv: str, env: dict[str, str] | None = None, stdin: str = "") -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        env=clean_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    last = proc.stdout.strip().splitlines()[-1]
    result: dict[str, object] = json.loads(last)
    return result


def test_help_does_not_import_openai() -> None:
    assert probe("--help") == {"code": 0, "heavy": []}


def test_import_rlm_and_its_public_names_do_not_import_openai() -> None:
    code = (
        "import sys, rlm\n"
        "from rlm import RLM, Batcher, ModelClient, RLMConfig\n"
        "print('openai' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "False"


def test_exec_in_a_sandbox_does_not_import_openai() -> None:
    result = probe("exec", "--backend", "restricted", "-", stdin="print(1 + 1)\n")
    assert result == {"code": 0, "heavy": []}


def test_a_run_without_streaming_does_not_import_openai(tmp_path: Path) -> None:
    # Plain completions go over rlm's own HTTP client; only streaming needs the SDK.
    context = tmp_path / "c.txt"
    context.write_text("the magic number is 42\n" * 10)
    with OfflineModelServer() as server:
        result = probe(
            "run",
            "--context",
            str(context),
            "--query",
            "q?",
            "--backend",
            "restricted",
            "--json",
            env=model_env(server),
        )
    assert result["heavy"] == []
    assert result["code"] in (0, 3)


@pytest.mark.parametrize("env", [{}, {"OPENAI_ORG_ID": "org-1", "OPENAI_PROJECT_ID": "p-1"}])
def test_the_headers_are_the_sdks_own(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    import openai

    from rlm.provider.client import sdk_base_url, sdk_headers

    for name in ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sdk = openai.AsyncOpenAI(api_key="sk-x", max_retries=0)
    theirs = {
        k: v
        for k, v in {**sdk.default_headers, **sdk.auth_headers}.items()
        if isinstance(v, str) and k != "X-Stainless-Async"
    }
    ours = sdk_headers("sk-x")
    assert ours.pop("X-Stainless-Async") == "async:asyncio"
    assert ours == theirs
    assert sdk_base_url(None).rstrip("/") == str(sdk.base_url).rstrip("/")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert sdk_base_url(None) == "http://127.0.0.1:9/v1"
    assert sdk_base_url("http://h/v1") == "http://h/v1"
