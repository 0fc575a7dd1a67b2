"""The Docker backend: each session's code runs in its own hardened container.

- :mod:`~rlm.backends.docker.container`: how containers are made, started, removed;
- :mod:`~rlm.backends.docker.channel`: the framed messages over the attach socket;
- :mod:`~rlm.backends.docker.source`: where a sandbox gets containers
  (:class:`ColdStart`), and :mod:`~rlm.backends.docker.pool` (:class:`ContainerPool`);
- :mod:`~rlm.backends.docker.sandbox`: :class:`DockerSandbox`, one session's sandbox;
- :mod:`~rlm.backends.docker.checks`: ``rlm doctor``, its cleanup and the orphan sweep.
"""

from rlm.backends.docker.checks import (
    cleanup_leftovers,
    doctor_checks,
    sweep_orphans,
    unavailable_reason,
)
from rlm.backends.docker.container import (
    LABEL,
    OWNER,
    OWNER_LABEL,
    ContainerSpec,
    SandboxContainer,
    describe_exit,
    launch,
)
from rlm.backends.docker.engine import connect
from rlm.backends.docker.pool import ContainerPool
from rlm.backends.docker.sandbox import DockerSandbox
from rlm.backends.docker.source import ColdStart, ContainerSource

__all__ = [
    "LABEL",
    "OWNER",
    "OWNER_LABEL",
    "ColdStart",
    "ContainerPool",
    "ContainerSource",
    "ContainerSpec",
    "DockerSandbox",
    "SandboxContainer",
    "cleanup_leftovers",
    "connect",
    "describe_exit",
    "doctor_checks",
    "launch",
    "sweep_orphans",
    "unavailable_reason",
]
