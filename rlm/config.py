"""Settings, from arguments first, then the environment, then a ``.env`` file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dotenv import dotenv_values, find_dotenv

from rlm.errors import ConfigurationError
from rlm.image import DEFAULT_IMAGE
from rlm.session import SessionLimits

BACKENDS = ("auto", "restricted", "docker")


def _env(
    name: str, default: str | None = None, dotfile: dict[str, str | None] | None = None
) -> str | None:
    value = os.environ.get(name)
    if value in (None, "") and dotfile:
        value = dotfile.get(name)
    return value if value not in (None, "") else default


#: The Docker runtime: runc, or runsc for gVisor.
DEFAULT_RUNTIME = "runc"
#: A container's memory, swap included (so no swap): chunking a 100 MB context in
#: model code (lines, chunks, prompts, the batch in flight) peaks near 1 GB.
DEFAULT_MEMORY = "2g"
DEFAULT_CPUS = 1.0

#: Field ← (environment variable, its type).
_ENVIRONMENT: dict[str, tuple[str, type[str] | type[int] | type[float]]] = {
    "model": ("RLM_MODEL", str),
    "sub_model": ("RLM_SUB_MODEL", str),
    "api_key": ("OPENAI_API_KEY", str),
    "base_url": ("OPENAI_BASE_URL", str),
    "backend": ("RLM_BACKEND", str),
    "docker_runtime": ("RLM_DOCKER_RUNTIME", str),
    "image": ("RLM_IMAGE", str),
    "docker_memory": ("RLM_DOCKER_MEMORY", str),
    "docker_cpus": ("RLM_DOCKER_CPUS", float),
    "cell_timeout": ("RLM_CELL_TIMEOUT", float),
    "request_timeout": ("RLM_REQUEST_TIMEOUT", float),
    "max_iterations": ("RLM_MAX_ITERATIONS", int),
    "output_limit": ("RLM_OUTPUT_LIMIT", int),
}


@dataclass(frozen=True)
class RLMConfig:
    """Everything an RLM run needs to know. Build with :meth:`from_env`."""

    model: str | None = None
    sub_model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    backend: str = "auto"
    docker_runtime: str = DEFAULT_RUNTIME
    image: str = DEFAULT_IMAGE
    #: Container memory limit (swap included).
    docker_memory: str = DEFAULT_MEMORY
    docker_cpus: float = DEFAULT_CPUS
    cell_timeout: float = 60.0
    request_timeout: float = 120.0
    max_iterations: int = 20
    #: Characters of a cell's output shown to the root model.
    output_limit: int = 20_000
    limits: SessionLimits = field(default_factory=SessionLimits)
    tenant: str = "default"

    @classmethod
    def from_env(cls, *, dotenv: bool = True, **overrides: Any) -> RLMConfig:
        """Read RLM_* and OPENAI_* variables (and ``.env``); ``overrides`` win over both.

        An override of ``None`` means "not given", so CLI flags can be passed through.
        """
        # .env fills in what the environment leaves unset, without being copied into
        # os.environ: the process environment stays as the operator set it.
        dotfile = dotenv_values(find_dotenv(usecwd=True)) if dotenv else {}
        # What is unset here takes the field's default: defaults live on the fields only.
        values: dict[str, Any] = {}
        for name, (variable, kind) in _ENVIRONMENT.items():
            raw = _env(variable, None, dotfile)
            if raw is None:
                continue
            try:
                values[name] = kind(raw)
            except ValueError:
                raise ConfigurationError(
                    f"{variable}={raw!r} is not a valid {kind.__name__}"
                ) from None
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: v for k, v in values.items() if v is not None}).checked()

    def checked(self) -> RLMConfig:
        if self.backend not in BACKENDS:
            raise ConfigurationError(
                f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if self.cell_timeout <= 0 or self.request_timeout <= 0:
            raise ConfigurationError("timeouts must be positive")
        if self.max_iterations < 1:
            raise ConfigurationError("max_iterations must be at least 1")
        return self

    def with_(self, **changes: Any) -> RLMConfig:
        return replace(self, **changes).checked()

    @property
    def effective_sub_model(self) -> str | None:
        return self.sub_model or self.model
