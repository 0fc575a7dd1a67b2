"""Sandbox backends: where model-written code runs.

Every backend implements :class:`~rlm.backends.base.Sandbox` and sends its sub-calls
through the same :class:`~rlm.bridge.SessionBridge`, so model code sees the same
``llm_query`` / ``llm_batch`` whichever runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlm.backends.base import CellResult, Sandbox, Snapshot
from rlm.errors import ConfigurationError

if TYPE_CHECKING:
    from rlm.backends.docker import ContainerSource
    from rlm.bridge import SessionBridge
    from rlm.config import RLMConfig

__all__ = ["CellResult", "Sandbox", "Snapshot", "create_sandbox"]


def create_sandbox(
    name: str, bridge: SessionBridge, config: RLMConfig, *, pool: ContainerSource | None = None
) -> Sandbox:
    """A new, not yet started sandbox of backend ``name`` for one session.

    With ``pool`` (Docker only) the session takes a pre-started container from it;
    the pool's spec then decides image, runtime and limits.
    """
    if name == "restricted":
        from rlm.backends.restricted import RestrictedSandbox

        return RestrictedSandbox(bridge, output_limit=config.output_limit)
    if name == "docker":
        from rlm.backends.docker import ContainerSpec, DockerSandbox

        if pool is not None:
            return DockerSandbox(bridge, pool, output_limit=config.output_limit)
        spec = ContainerSpec.from_config(config)
        return DockerSandbox(bridge, spec=spec, output_limit=config.output_limit)
    raise ConfigurationError(f"unknown backend {name!r}; use restricted or docker")
