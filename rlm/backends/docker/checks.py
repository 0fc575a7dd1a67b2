"""Checks and housekeeping for the CLI: is Docker usable, and what was left behind."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import anyio

from rlm.backends.docker.container import (
    LABEL,
    OWNER_LABEL,
    ContainerSpec,
    launch,
    remove_quietly,
    unavailable,
    unreachable,
)
from rlm.backends.docker.engine import connect, engine_address
from rlm.errors import SandboxUnavailable

if TYPE_CHECKING:
    from docker import DockerClient

    from rlm.config import RLMConfig


def unavailable_reason(config: RLMConfig) -> str | None:
    """``None`` when Docker can run sandboxes for ``config``, else what is missing and
    what to do about it (one line)."""
    import docker
    import docker.errors

    spec = ContainerSpec.from_config(config)
    try:
        client = connect(timeout=5)
        client.ping()
    except SandboxUnavailable as exc:
        return str(exc)  # an unsafe transport or a failed TLS check: says what to do
    except Exception as exc:
        return unreachable(_short(exc))
    try:
        try:
            client.images.get(spec.image)
        except docker.errors.ImageNotFound as exc:
            return str(unavailable(exc, spec))
        if spec.runtime != "runc":
            runtimes = client.info().get("Runtimes") or {}
            if spec.runtime not in runtimes:
                return (
                    f"Docker runtime {spec.runtime!r} is not registered "
                    "(run scripts/setup-docker.sh to add gVisor's runsc), or use --runtime runc"
                )
    except Exception as exc:
        return f"Docker engine error: {_short(exc)}"
    finally:
        client.close()
    return None


def runtime_problems(runtimes: dict[str, Any]) -> list[str]:
    """What is wrong with the engine's runtimes (``docker info``'s ``Runtimes``) for
    sandboxes: a gVisor runtime registered without ``--oci-seccomp`` runs the
    sandbox with no seccomp filter at all (``Seccomp: 0`` inside)."""
    problems = []
    for name, entry in sorted(runtimes.items()):
        entry = entry if isinstance(entry, dict) else {}
        path = str(entry.get("path") or "")
        if name != "runsc" and os.path.basename(path) != "runsc":
            continue
        args = [str(a) for a in entry.get("runtimeArgs") or []]
        if not any(a in ("--oci-seccomp", "--oci-seccomp=true") for a in args):
            problems.append(
                f"runtime {name!r} (gVisor) is registered without --oci-seccomp, so its "
                "sandboxes run with no seccomp filter; add it to the runtime's runtimeArgs "
                "in /etc/docker/daemon.json and reload dockerd (scripts/setup-docker.sh does)"
            )
    return problems


def engine_runtime_problems(
    only: Collection[str] | None = None, client: DockerClient | None = None
) -> list[str]:
    """:func:`runtime_problems` of the engine of the environment (or ``client``'s),
    for the runtimes named in ``only`` (all if None); an engine that cannot be asked
    has no problems to report here (the checks that need it say so)."""
    own = client is None
    try:
        client = connect(client)
    except Exception:
        return []
    try:
        runtimes = dict(client.info().get("Runtimes") or {})
        if only is not None:
            runtimes = {k: v for k, v in runtimes.items() if k in only}
        return runtime_problems(runtimes)
    except Exception:
        return []
    finally:
        if own:
            client.close()


def doctor_checks(config: RLMConfig) -> list[tuple[str, bool, str]]:
    """``(check, ok, detail or what to do)`` for engine, image, runc and gVisor."""
    from rlm.image import image_status

    try:
        client = connect()
        version = client.version()
    except SandboxUnavailable as exc:
        return [("docker engine", False, str(exc))]
    except Exception as exc:
        return [
            (
                "docker engine",
                False,
                f"not reachable at {engine_address()} ({_short(exc)}); "
                "run scripts/setup-docker.sh or start dockerd",
            )
        ]
    checks: list[tuple[str, bool, str]] = [
        (
            "docker engine",
            True,
            f"{version.get('Version', '?')} at {engine_address()}; {_userns_note(client)}",
        )
    ]
    try:
        ok, detail = image_status(config.image, client)
        checks.append(("sandbox image", ok, detail))
        if ok:
            runtimes = client.info().get("Runtimes") or {}
            for runtime, label in (("runc", "runc"), ("runsc", "gVisor (runsc)")):
                if runtime not in runtimes:
                    checks.append(
                        (label, False, "not registered with Docker; run scripts/setup-docker.sh")
                    )
                    continue
                problems = runtime_problems({runtime: runtimes[runtime]})
                if problems:
                    checks.append((label, False, problems[0]))
                    continue
                ok, detail = _smoke_test(client, config.image, runtime)
                if ok and runtime == "runsc":
                    detail += "; seccomp applied inside gVisor (--oci-seccomp)"
                checks.append((label, ok, detail))
    finally:
        client.close()
    return checks


def _userns_note(client: DockerClient) -> str:
    """Whether the engine remaps container users (``userns-remap``)."""
    try:
        options = client.info().get("SecurityOptions") or []
    except Exception:
        return "userns-remap unknown"
    if any("name=userns" in str(option) for option in options):
        return "userns-remap on (container root is an unprivileged host uid)"
    return "userns-remap off"


def _smoke_test(client: DockerClient, image: str, runtime: str) -> tuple[bool, str]:
    async def probe() -> str:
        started = time.monotonic()
        box = await launch(client, ContainerSpec(image=image, runtime=runtime))
        try:
            return f"sandbox starts in {time.monotonic() - started:.2f} s (Python {box.python})"
        finally:
            await box.remove()

    try:
        return True, anyio.run(probe)
    except Exception as exc:
        return False, _short(exc, 300)


def cleanup_leftovers(client: DockerClient | None = None, *, everything: bool = False) -> int:
    """Remove sandbox containers left behind by a crashed rlm; returns how many.

    Without ``everything``, what :func:`sweep_orphans` removes. ``everything=True``
    removes every sandbox container, including live sessions'.
    """
    client = connect(client)
    host = socket.gethostname()
    removed = 0
    for item in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        owner = (item.get("Labels") or {}).get(OWNER_LABEL, "")
        in_use = item.get("State") in ("running", "created")
        if not everything and in_use and _owner_alive(owner, host):
            continue
        remove_quietly(client, item["Id"])
        removed += 1
    return removed


def sweep_orphans(client: DockerClient | None = None) -> int:
    """Remove the sandbox containers no live process owns; returns how many.

    A container is an orphan when it is not running, or when the process that
    made it (``rlm.owner`` label) is gone from this host. A container its live
    owner is still starting ("created") is not: removing it would kill another
    process's session as it starts; nor is another host's, whose processes this
    host cannot see. Blocking: call it off the event loop.
    """
    return cleanup_leftovers(client)


def _owner_alive(owner: str, host: str) -> bool:
    owner_host, _, pid = owner.rpartition(":")
    if owner_host != host or not pid.isdigit():
        return owner_host != host  # another machine's session: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit]
