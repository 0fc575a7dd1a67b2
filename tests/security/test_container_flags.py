"""The container flags SECURITY.md lists that the backend tests do not inspect."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from rlm.backends.docker import ContainerSpec, launch
from rlm.backends.docker.container import seccomp_profile
from tests.support import IMAGE

#: Variables the image itself sets; the host adds none.
IMAGE_ENV = {"PATH", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "LANG", "HOME"}


@pytest.mark.docker
@pytest.mark.parametrize("runtime", ["runc", pytest.param("runsc", marks=pytest.mark.runsc)])
def test_the_remaining_flags_are_set(runtime: str, docker_client: Any) -> None:
    async def inspect() -> dict[str, Any]:
        box = await launch(docker_client, ContainerSpec(image=IMAGE, runtime=runtime))
        try:
            return dict(docker_client.api.inspect_container(box.id))
        finally:
            await box.remove()

    facts = anyio.run(inspect)
    host, config = facts["HostConfig"], facts["Config"]
    assert host["IpcMode"] == "private"
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]} == {"core": (0, 0)}
    tmpfs = host["Tmpfs"]["/tmp"].split(",")
    assert {"rw", "nosuid", "nodev", "noexec", "size=64m"} <= set(tmpfs)
    assert config["Hostname"] == "sandbox"
    assert config["WorkingDir"] == "/tmp"
    assert {e.partition("=")[0] for e in config["Env"]} <= IMAGE_ENV
    # rlm's own seccomp allow-list, not the engine's default profile.
    assert host["SecurityOpt"] == ["no-new-privileges:true", f"seccomp={seccomp_profile()}"]
