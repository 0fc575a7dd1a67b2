"""The checker itself can fail: payloads are live, and weakened deployments are caught.

A security check that always says "contained" proves nothing. Here the corpus meets
sandboxes that are deliberately unsafe (tests/security/weak.py): a plain ``exec`` in
this process, and containers that get the host's environment and network. The
harness must report every way they leak.
"""

from __future__ import annotations

import functools
import io
import json
import re
import statistics
from typing import Any

import anyio
import pytest
from rich.console import Console

from rlm.security import load_corpus, run_corpus
from rlm.security.check import run_security_check
from rlm.security.corpus import parse_corpus_file
from rlm.security.harness import SUITE_OUTPUT_LIMIT
from tests.security.weak import leaky_docker_target, naked_target
from tests.support import IMAGE


@pytest.mark.filterwarnings("ignore")
def test_naked_payloads_are_live() -> None:
    """Every payload marked ``naked`` gets through when nothing guards the host."""
    live = [p for p in load_corpus() if p.naked]
    assert len(live) >= 60
    [report] = anyio.run(functools.partial(run_corpus, [naked_target()], live, grace=4.0))
    dead = [r.payload_id for r in report.results if r.category != "health" and r.contained]
    assert not dead, f"these payloads did nothing even without a sandbox: {dead}"
    leaked = [r for r in report.results if any("canary" in p for p in r.problems)]
    assert len(leaked) >= 20, "the canary was not where the payloads look for it"


MINI_CORPUS = '''
category = "selftest"

[defaults]
outcome = "contained"

[[payload]]
id = "self-canary-in-variable"
code = """
import os
loot = os.environ["@ENV_NAME@"][::-1][::-1]
"""

[[payload]]
id = "self-canary-over-the-bridge"
code = """
import os
llm_query("the key is " + os.environ["OPENAI_API_KEY"])
"""

[[payload]]
id = "self-tcp-listener"
code = """
import socket
socket.create_connection(("127.0.0.1", @PORT@), timeout=2).close()
"""

[[payload]]
id = "self-udp-listener"
code = """
import socket, time
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", @UDP_PORT@))
time.sleep(0.3)
"""

[[payload]]
id = "self-unix-listener"
code = """
import socket
s = socket.socket(socket.AF_UNIX)
s.connect("@UNIX_SOCKET@")
s.close()
"""

[[payload]]
id = "self-host-write"
code = """
with open("@HOST_WRITE@", "w") as f:
    f.write("x")
"""

[[payload]]
id = "self-host-module-changed"
code = """
import statistics
statistics.mean = statistics.median
"""

[[payload]]
id = "self-wrong-outcome"
outcome = "error"
code = """
print("no error here")
"""

[[payload]]
id = "self-output-over-cap"
code = """
print("x" * 100)
"""
max_stdout = 10
'''

EXPECTED_PROBLEM = {
    "self-canary-in-variable": "canary secret leaked into variable loot",
    "self-canary-over-the-bridge": "crossed the bridge in a request frame",
    "self-tcp-listener": "reached a host listener: tcp 127.0.0.1",
    "self-udp-listener": "reached a host listener: udp datagram",
    "self-unix-listener": "reached a host listener: unix",
    "self-host-write": "files appeared in the host directory",
    "self-host-module-changed": "host objects were modified: ['statistics.mean']",
    "self-wrong-outcome": "expected an error",
    "self-output-over-cap": "over 10",
}


def test_the_harness_catches_each_kind_of_harm() -> None:
    payloads = parse_corpus_file(MINI_CORPUS, "selftest.toml")
    mean = statistics.mean
    try:
        [report] = anyio.run(functools.partial(run_corpus, [naked_target()], payloads))
    finally:
        statistics.mean = mean  # type: ignore[assignment]
    problems = {r.payload_id: " | ".join(r.problems) for r in report.results}
    for pid, expected in EXPECTED_PROBLEM.items():
        assert expected in problems[pid], f"{pid}: {problems[pid]!r}"
    assert "<CANARY>" not in problems["self-canary-in-variable"]


@pytest.mark.docker
def test_security_check_fails_on_a_leaky_deployment(docker_client: Any) -> None:
    """Containers with the host's environment and network: the check says so, exit 1."""
    out = io.StringIO()
    status = run_security_check(
        targets=[leaky_docker_target("runc", IMAGE, SUITE_OUTPUT_LIMIT)],
        categories=["secrets", "network"],
        as_json=True,
        console=Console(file=out, width=200),
    )
    assert status == 1
    report = json.loads(out.getvalue())
    assert report["ok"] is False
    [target] = report["targets"]
    assert target["backend"] == "leaky-docker:runc"
    failed = {f["id"]: f for f in target["failures"]}
    assert target["categories"]["secrets"]["failed"] >= 3
    assert target["categories"]["network"]["failed"] >= 3
    assert "canary" in " ".join(failed["sec-env-os-environ"]["problems"])
    assert "reached a host listener" in " ".join(failed["net-tcp-host-listener"]["problems"])
    assert "interfaces besides loopback" in failed["net-interfaces"]["evidence"]
    # The evidence shows where, never the secret itself.
    assert "<CANARY>" in out.getvalue()
    assert not re.search(r"rlmcanary-[0-9a-f]{32}", out.getvalue())


def test_security_check_table_names_failures_and_exits_non_zero() -> None:
    out = io.StringIO()
    payloads_before = len(load_corpus(categories=["secrets"]))
    status = run_security_check(
        targets=[naked_target()],
        categories=["secrets"],
        console=Console(file=out, width=250, color_system=None),
    )
    text = out.getvalue()
    assert status == 1
    assert "rlm security-check" in text and "failed ids" in text
    assert "sec-file-host-secret-direct" in text
    assert "FAILED" in text
    assert f"{payloads_before + 1} payload runs" in text
