"""The backends the corpus runs against, and which of them work on this machine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlm.config import RLMConfig
from rlm.stack import SandboxFactory

if TYPE_CHECKING:
    from docker import DockerClient

    from rlm.backends.docker import ContainerSpec


@dataclass
class Target:
    """One deployment to attack: a backend kind, a runtime and how to build it."""

    name: str
    kind: str  # "restricted" or "docker": which payloads apply
    factory: SandboxFactory
    runtime: str | None = None
    #: Something that identifies the sandbox image; it must not change under attack.
    fingerprint: Callable[[], str | None] | None = None
    #: Releases what the factory shares between sandboxes (an engine connection).
    close: Callable[[], None] | None = None
    #: How this deployment makes a child RLM's sandbox (its backend settings); None:
    #: the target cannot run children, and ``rlm_query`` stays a plain sub-call.
    child_config: RLMConfig | None = None

    @property
    def in_process(self) -> bool:
        """Model code runs in this process (it shares the event loop and modules)."""
        return self.kind == "restricted"


def restricted_target(output_limit: int) -> Target:
    from rlm.backends.restricted import RestrictedSandbox

    return Target(
        name="restricted",
        kind="restricted",
        factory=lambda bridge: RestrictedSandbox(bridge, output_limit=output_limit),
        child_config=RLMConfig(backend="restricted", output_limit=output_limit),
    )


def image_fingerprint(image: str) -> str | None:
    """The image's id as the engine reports it, or None if it cannot be read."""
    try:
        import docker

        client = docker.from_env()
        try:
            return str(client.images.get(image).id)
        finally:
            client.close()
    except Exception:
        return None


def docker_target(runtime: str, image: str, output_limit: int, **limits: Any) -> Target:
    """Docker with ``runtime`` and ``image``; ``limits`` are ContainerSpec's (memory, ...)."""
    from rlm.backends.docker import ContainerSpec

    return spec_target(ContainerSpec(image=image, runtime=runtime, **limits), output_limit)


def spec_target(spec: ContainerSpec, output_limit: int) -> Target:
    """Docker sandboxes whose containers are made as ``spec`` says."""
    from rlm.backends.docker import ColdStart, DockerSandbox

    engine: list[DockerClient] = []

    def client() -> DockerClient:
        # One engine connection for every sandbox of the target, as a pool has.
        if not engine:
            from rlm.backends.docker import connect

            engine.append(connect())
        return engine[0]

    def close() -> None:
        while engine:
            engine.pop().close()

    return Target(
        name=f"docker:{spec.runtime}",
        kind="docker",
        runtime=spec.runtime,
        factory=lambda bridge: DockerSandbox(
            bridge, ColdStart(spec, docker_client=client()), output_limit=output_limit
        ),
        fingerprint=lambda: image_fingerprint(spec.image),
        close=close,
        # Children get containers of the same image, runtime and limits.
        child_config=RLMConfig(
            backend="docker",
            docker_runtime=spec.runtime,
            image=spec.image,
            docker_memory=spec.memory,
            docker_cpus=spec.cpus,
            output_limit=output_limit,
        ),
    )


def docker_problem(config: RLMConfig) -> str | None:
    """Why the Docker backend with ``config``'s runtime and image cannot run here."""
    try:
        from rlm.backends import docker as docker_backend
    except ImportError as exc:
        return f"the Docker backend is not installed ({exc})"
    # One look at the engine: it checks the runtime too (unless it is runc).
    return docker_backend.unavailable_reason(config)


def select_targets(
    *,
    backend: str | None,
    runtime: str | None,
    image: str | None,
    output_limit: int,
) -> tuple[list[Target], list[tuple[str, str]]]:
    """The targets to attack, and those asked for (or implied) that cannot run here.

    With no ``backend`` every backend is tried; an unavailable one is reported, not
    silently dropped. ``runtime`` narrows Docker to one runtime.
    """
    base = RLMConfig.from_env(dotenv=False, image=image)
    targets: list[Target] = []
    missing: list[tuple[str, str]] = []
    if backend in (None, "restricted"):
        targets.append(restricted_target(output_limit))
    if backend in (None, "docker"):
        for rt in (runtime,) if runtime else ("runc", "runsc"):
            config = base.with_(docker_runtime=rt)
            problem = docker_problem(config)
            if problem is None:
                from rlm.backends.docker import ContainerSpec

                # The deployment's own limits (RLM_DOCKER_MEMORY, RLM_DOCKER_CPUS).
                targets.append(spec_target(ContainerSpec.from_config(config), output_limit))
            else:
                missing.append((f"docker:{rt}", problem))
    return targets, missing
