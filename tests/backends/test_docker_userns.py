"""User-namespace remapping: on an engine with ``userns-remap: "default"`` (a second
dockerd the test starts, tests/engines.py), container root is an unprivileged host
uid, so even a process that escaped runc would not be host root. (Under gVisor the
host process that holds the sandbox already runs as an unprivileged uid.)

The sandbox runs unchanged there (same spec, same flags); the proof is read on both
sides: the container's uid map inside, and the host-side uid of its process in the
host's /proc.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox
from tests.engines import SecondEngine, ensure_dockremap, running_engine
from tests.support import IMAGE, FakeBatcher, make_bridge

pytestmark = pytest.mark.docker

PROBE = r"""
import json, os
print(json.dumps({
    "uid": os.getuid(),
    "uid_map": open("/proc/self/uid_map").read().split(),
    "gid_map": open("/proc/self/gid_map").read().split(),
    "pid": os.getpid(),
}))
"""


@pytest.fixture(scope="module")
def userns_engine(docker_client: Any) -> Iterator[SecondEngine]:
    with running_engine(docker_client, IMAGE, userns_remap=True) as engine:
        yield engine


def _host_uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uids of host process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_container_root_is_not_host_root(runtime: str, userns_engine: SecondEngine) -> None:
    base_uid, base_gid = ensure_dockremap()
    assert base_uid > 0 and base_gid > 0
    with userns_engine.client() as client:
        assert "name=userns" in client.info()["SecurityOptions"]
        spec = ContainerSpec(image=IMAGE, runtime=runtime)
        box = DockerSandbox(make_bridge(FakeBatcher()), ColdStart(spec, docker_client=client))
        try:
            await box.start()
            result = await box.execute(PROBE, 30)
            assert result.error is None, result.error
            seen = json.loads(result.stdout)
            assert seen["uid"] == 10001
            if runtime == "runc":
                # Inside: container uid 0 is base_uid on the host, 65536 ids long.
                assert seen["uid_map"][:3] == ["0", str(base_uid), "65536"]
                assert seen["gid_map"][:3] == ["0", str(base_gid), "65536"]
            # (gVisor shows its own kernel's identity map inside; the host side counts.)
            # Outside: the container's process as the host's /proc sees it.
            state = client.api.inspect_container(box.container_id)["State"]
            host_pid = int(state["Pid"])
            uids = _host_uids(host_pid)
            if runtime == "runc":
                # The runner itself: base + 10001, never root.
                assert uids == [base_uid + 10001] * 4, uids
            else:
                # gVisor's sandbox process, which holds the whole container (the
                # Sentry and the code it runs): runsc itself drops it to an
                # unprivileged host uid (nobody), with or without the remap.
                assert _cmdline(host_pid).startswith("runsc-sandbox ")
                assert 0 not in uids, uids
            assert (await box.execute("print(6 * 7)", 10)).stdout == "42\n"
        finally:
            await box.close()


def test_doctor_reports_userns_remap(
    userns_engine: SecondEngine, docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlm.backends.docker import doctor_checks
    from rlm.config import RLMConfig

    monkeypatch.setenv("DOCKER_HOST", userns_engine.url)
    found = {name: (ok, detail) for name, ok, detail in doctor_checks(RLMConfig(image=IMAGE))}
    assert found["docker engine"][0]
    assert (
        "userns-remap on (container root is an unprivileged host uid)"
        in (found["docker engine"][1])
    )
    assert found["runc"][0] and found["gVisor (runsc)"][0], found
    monkeypatch.delenv("DOCKER_HOST")
    (_, _, detail), *_ = doctor_checks(RLMConfig(image=IMAGE))
    assert detail.endswith("userns-remap off")
