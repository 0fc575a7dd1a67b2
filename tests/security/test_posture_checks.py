"""``rlm doctor`` and ``rlm security-check`` say when gVisor runs without seccomp.

runsc applies the container's seccomp profile inside the sandbox only when it is
registered with ``--oci-seccomp``; both commands read the runtime's arguments from
the engine (``docker info``'s ``Runtimes``) and fail when it is missing.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from rlm.backends.docker import ContainerSpec, checks
from rlm.config import RLMConfig
from rlm.security.check import posture_problems
from rlm.security.posture import judge
from rlm.security.report import SuiteReport, TargetReport
from rlm.security.targets import docker_target, spec_target
from tests.support import IMAGE

RUNSC = "/usr/bin/runsc"


def test_a_gvisor_runtime_without_oci_seccomp_is_a_problem() -> None:
    bare = {"path": RUNSC, "runtimeArgs": ["--network=none"]}
    (problem,) = checks.runtime_problems({"runsc": bare})
    assert "'runsc'" in problem and "--oci-seccomp" in problem and "no seccomp" in problem
    # Found by its path under another name too; no args at all is no better.
    assert len(checks.runtime_problems({"gvisor": {"path": RUNSC}})) == 1
    assert checks.runtime_problems({"runc": {"path": "runc"}}) == []
    for args in (["--network=none", "--oci-seccomp"], ["--oci-seccomp=true"]):
        assert checks.runtime_problems({"runsc": {"path": RUNSC, "runtimeArgs": args}}) == []


class _WithoutOciSeccomp:
    """A real engine client whose ``docker info`` shows runsc without --oci-seccomp."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def info(self) -> dict[str, Any]:
        info = dict(self._client.info())
        runtimes = dict(info.get("Runtimes") or {})
        runtimes["runsc"] = {"path": RUNSC, "runtimeArgs": ["--network=none"]}
        info["Runtimes"] = runtimes
        return info


@pytest.mark.docker
def test_doctor_fails_gvisor_without_oci_seccomp(
    docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docker

    fresh = docker.from_env()  # doctor closes its client
    monkeypatch.setattr(checks, "connect", lambda client=None: _WithoutOciSeccomp(fresh))
    found = {
        name: (ok, detail) for name, ok, detail in checks.doctor_checks(RLMConfig(image=IMAGE))
    }
    ok, detail = found["gVisor (runsc)"]
    assert not ok and "--oci-seccomp" in detail, detail
    assert found["runc"][0], found


@pytest.mark.docker
def test_doctor_says_gvisor_applies_seccomp_on_this_engine(docker_client: Any) -> None:
    found = {
        name: (ok, detail) for name, ok, detail in checks.doctor_checks(RLMConfig(image=IMAGE))
    }
    ok, detail = found["gVisor (runsc)"]
    assert ok and "seccomp applied inside gVisor" in detail, detail


@pytest.mark.docker
def test_security_check_fails_when_gvisor_lacks_oci_seccomp(
    docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docker

    targets = [docker_target(rt, IMAGE, 1000) for rt in ("runc", "runsc")]
    # This engine registers runsc with --oci-seccomp (scripts/setup-docker.sh), and
    # the probe in a sandbox of each runtime finds the whole posture.
    assert posture_problems(targets) == []
    monkeypatch.setattr(
        checks, "connect", lambda client=None: _WithoutOciSeccomp(docker.from_env())
    )
    problems = posture_problems(targets)
    assert len(problems) == 1 and "--oci-seccomp" in problems[0]
    assert posture_problems(targets[:1]) == []  # runc alone: nothing to say
    report = SuiteReport(targets=[TargetReport(backend="docker:runsc")], posture=problems)
    assert not report.ok
    assert report.to_dict()["posture"] == problems
    out = io.StringIO()
    report.render(Console(file=out, width=200))
    assert "engine set-up: runtime 'runsc' (gVisor) is registered without --oci-seccomp" in (
        out.getvalue()
    )


class _WeakSpec(ContainerSpec):
    """A container with every posture flag undone (never use outside this test)."""

    def create_kwargs(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        kwargs = super().create_kwargs(name, labels)
        kwargs.update(
            security_opt=["seccomp=unconfined"],
            cap_drop=[],
            read_only=False,
            network_mode="host",
            user="0:0",
        )
        return kwargs


@pytest.mark.docker
def test_the_posture_probe_names_each_weakness(docker_client: Any) -> None:
    weak = spec_target(_WeakSpec(image=IMAGE, runtime="runc"), 1000)
    weak.name = "weak-docker:runc"
    problems = posture_problems([weak])
    text = "\n".join(problems)
    assert all(p.startswith("weak-docker:runc: ") for p in problems), problems
    assert "without a seccomp filter (Seccomp: 0)" in text
    assert "holds capabilities (CapEff: " in text
    assert "may gain privileges" in text
    assert "root filesystem is writable" in text
    assert "network interfaces besides lo" in text


def test_the_posture_judge() -> None:
    good = {"Seccomp": "2", "CapEff": "0" * 16, "CapPrm": "0" * 16, "CapBnd": "0" * 16}
    good |= {"no_new_privs": 1, "root": ["ro"], "root_write": "EROFS", "interfaces": ["lo"]}
    assert judge(good) == []
    assert len(judge(good | {"Seccomp": "0"})) == 1
    assert len(judge(good | {"interfaces": ["eth0", "lo"]})) == 1
    assert len(judge(good | {"root_write": "ok"})) == 1
