"""One process's housekeeping never ends another live process's sessions."""

from __future__ import annotations

from typing import Any

import pytest

from rlm.backends.docker import LABEL, OWNER, OWNER_LABEL, ContainerSpec, cleanup_leftovers
from tests.support import IMAGE


@pytest.mark.docker
def test_cleanup_spares_a_container_its_live_owner_is_still_starting(docker_client: Any) -> None:
    # `rlm doctor --cleanup` in one process while another creates a sandbox: between
    # create and start the container is "created", and must survive the cleanup.
    spec = ContainerSpec(image=IMAGE)
    kwargs = spec.create_kwargs("rlm-sandbox-starting-test", {LABEL: "1", OWNER_LABEL: OWNER})
    container = docker_client.containers.create(**kwargs)
    try:
        assert container.status == "created"
        cleanup_leftovers(docker_client)
        ids = {c["Id"] for c in docker_client.api.containers(all=True)}
        assert container.id in ids
    finally:
        container.remove(force=True)
