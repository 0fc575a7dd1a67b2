"""What the service's config file says, as plain data: server settings, profiles,
tenants and Docker engines (:mod:`rlm.service.config` reads and checks the file).

Nothing secret is here: tenants' tokens appear only as SHA-256 hashes, and the
provider's key and URL come from the environment (``OPENAI_API_KEY``,
``OPENAI_BASE_URL``, ``.env``) through the ``base`` config :meth:`Profile.rlm_config`
is given.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from rlm.config import RLMConfig
from rlm.limits import SessionLimits
from rlm.tree import ModelPrice

Backend = Literal["docker", "restricted"]
Runtime = Literal["runc", "runsc"]


def _default_run_slots() -> int:
    # Runs spend most of their time waiting on the model, but each cell, sandbox
    # start and event takes CPU here and on the engine: beyond a few per core, more
    # at once only makes every run slower. At 3 per core, two tenants' p99 beside a
    # flooding third stayed within 2x of their p99 alone (bench/bench_service.py).
    return 3 * (os.cpu_count() or 1)


def _replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: settings of the whole service."""

    #: A SQLite path (absolute once loaded), or a postgresql:// URL.
    database: str = "rlm.db"
    metrics_token_sha256: str | None = None
    allow_unsafe_restricted: bool = False
    max_body_bytes: int = 256 << 20
    #: Warm Docker containers.
    pool_size: int = 2
    #: The shared batcher's global limit on sub-calls in flight.
    max_concurrent_sub_calls: int = 256
    #: Runs going at once on this replica, over all tenants (the rest wait, queued,
    #: and get slots fairly); None: no bound beyond each tenant's own.
    max_concurrent_runs: int | None = field(default_factory=_default_run_slots)
    replica_id: str = field(default_factory=_replica_id)
    #: A replica silent this long is taken for dead, its runs in flight interrupted.
    replica_timeout_s: float = 30.0
    #: Failed bearer tokens an address may send per minute before it gets 429s;
    #: None: no limit (rlm/service/guard.py).
    auth_failures_per_minute: int | None = 10
    #: The reverse proxy whose X-Forwarded-For names the client (else the peer counts).
    trusted_proxy: str | None = None
    #: Seconds a request body may pause between chunks before 408 (4x for all of it).
    body_timeout_s: float = 30.0


@dataclass(frozen=True)
class Tenant:
    """``[[tenants]]``: who may call, with what, and how much."""

    name: str
    token_sha256: str = field(repr=False)
    profiles: tuple[str, ...]
    max_concurrent_runs: int = 4
    runs_per_minute: int | None = 60
    tokens_per_day: int | None = None
    max_context_bytes: int = 100 << 20
    max_wall_time_s: float | None = 3600.0


@dataclass(frozen=True)
class Profile:
    """``[profiles.NAME]``: a model name clients ask for, and how its runs are made."""

    name: str
    model: str
    sub_model: str | None = None
    backend: Backend = "docker"
    runtime: Runtime = "runc"
    max_depth: int = 1
    child_model: str | None = None
    max_iterations: int | None = None
    limits: SessionLimits = field(default_factory=SessionLimits)
    image: str | None = None
    docker_memory: str | None = None
    docker_cpus: float | None = None
    cell_timeout: float | None = None
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)

    def rlm_config(self, base: RLMConfig, *, tenant: Tenant | None = None) -> RLMConfig:
        """This profile's run settings on top of ``base`` (the provider's key and URL).

        With ``tenant``, the run is counted under that tenant in the shared batcher's
        fair shares, and its wall time is the lower of the profile's and the tenant's,
        so the run ends with a forced-final turn rather than being cut off.
        """
        limits = self.limits
        if tenant is not None and tenant.max_wall_time_s is not None:
            own = limits.max_wall_time_s
            if own is None or own > tenant.max_wall_time_s:
                limits = replace(limits, max_wall_time_s=tenant.max_wall_time_s)
        changes: dict[str, Any] = {
            "model": self.model,
            "sub_model": self.sub_model,
            "backend": self.backend,
            "docker_runtime": self.runtime,
            "max_depth": self.max_depth,
            "child_model": self.child_model,
            "limits": limits,
            "prices": {**base.prices, **self.prices},
        }
        optional = {
            "max_iterations": self.max_iterations,
            "image": self.image,
            "docker_memory": self.docker_memory,
            "docker_cpus": self.docker_cpus,
            "cell_timeout": self.cell_timeout,
            "tenant": tenant.name if tenant is not None else None,
        }
        changes.update({k: v for k, v in optional.items() if v is not None})
        return base.with_(**changes)


@dataclass(frozen=True)
class Engine:
    """``[[engines]]``: a Docker engine sandboxes may be placed on."""

    url: str
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    #: Sandboxes this engine takes at once; None: no bound of its own.
    max_sandboxes: int | None = None
    #: Allow tcp:// without TLS (refused otherwise: that API is root on the engine).
    insecure_plaintext: bool = False


@dataclass(frozen=True)
class ServiceConfig:
    server: ServerSettings
    profiles: Mapping[str, Profile]
    tenants: tuple[Tenant, ...]
    #: Empty: the one engine of the environment (``DOCKER_HOST``, or the local socket).
    engines: tuple[Engine, ...] = ()
