"""Settings, from arguments first, then the environment, then a ``.env`` file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dotenv import dotenv_values, find_dotenv

from rlm.session import SessionLimits

BACKENDS = ("auto", "restricted", "docker")


def _env(
    name: str, default: str | None = None, dotfile: dict[str, str | None] | None = None
) -> str | None:
    value = os.environ.get(name)
    if value in (None, "") and dotfile:
        value = dotfile.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class RLMConfig:
    """Everything an RLM run needs to know. Build with :meth:`from_env`."""

    model: str | None = None
    sub_model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    backend: str = "auto"
    docker_runtime: str = "runc"
    image: str = "rlm-sandbox:latest"
    #: Container memory limit (swap included). Chunking a 100 MB context needs ~1 GB.
    docker_memory: str = "2g"
    docker_cpus: float = 1.0
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
        values: dict[str, Any] = {
            "model": _env("RLM_MODEL", None, dotfile),
            "sub_model": _env("RLM_SUB_MODEL", None, dotfile),
            "api_key": _env("OPENAI_API_KEY", None, dotfile),
            "base_url": _env("OPENAI_BASE_URL", None, dotfile),
            "backend": _env("RLM_BACKEND", "auto", dotfile),
            "docker_runtime": _env("RLM_DOCKER_RUNTIME", "runc", dotfile),
            "image": _env("RLM_IMAGE", "rlm-sandbox:latest", dotfile),
            "docker_memory": _env("RLM_DOCKER_MEMORY", "2g", dotfile),
        }
        for name, kind in (
            ("cell_timeout", float),
            ("request_timeout", float),
            ("max_iterations", int),
            ("output_limit", int),
            ("docker_cpus", float),
        ):
            raw = _env(f"RLM_{name.upper()}", None, dotfile)
            if raw is not None:
                try:
                    values[name] = kind(raw)
                except ValueError:
                    from rlm.errors import ConfigurationError

                    raise ConfigurationError(
                        f"RLM_{name.upper()}={raw!r} is not a valid {kind.__name__}"
                    ) from None
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: v for k, v in values.items() if v is not None}).checked()

    def checked(self) -> RLMConfig:
        from rlm.errors import ConfigurationError

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
    def root_model(self) -> str | None:
        return self.model

    @property
    def effective_sub_model(self) -> str | None:
        return self.sub_model or self.model
