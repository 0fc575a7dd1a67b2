"""Settings, from arguments first, then the environment, then a ``.env`` file."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dotenv import dotenv_values, find_dotenv

from rlm.errors import ConfigurationError
from rlm.image import DEFAULT_IMAGE
from rlm.limits import SessionLimits
from rlm.tree import ModelPrice

BACKENDS = ("auto", "restricted", "docker")
#: Where the restricted backend runs cells (see rlm.backends.restricted): in a
#: confined worker process, or in this process. In-process is the default: a worker
#: costs ~5 ms to start with its spare ready (120-430 ms back to back) and 0.5-1 ms
#: per trivial cell, against 0.1 ms for each in-process (bench/bench_restricted.py).
RESTRICTED_ISOLATIONS = ("inprocess", "process")


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
    "restricted_isolation": ("RLM_RESTRICTED_ISOLATION", str),
    "docker_runtime": ("RLM_DOCKER_RUNTIME", str),
    "image": ("RLM_IMAGE", str),
    "docker_memory": ("RLM_DOCKER_MEMORY", str),
    "docker_cpus": ("RLM_DOCKER_CPUS", float),
    "cell_timeout": ("RLM_CELL_TIMEOUT", float),
    "request_timeout": ("RLM_REQUEST_TIMEOUT", float),
    "max_iterations": ("RLM_MAX_ITERATIONS", int),
    "output_limit": ("RLM_OUTPUT_LIMIT", int),
    "max_depth": ("RLM_MAX_DEPTH", int),
    "child_model": ("RLM_CHILD_MODEL", str),
    "root_context_window": ("RLM_ROOT_CONTEXT_WINDOW", int),
}


def parse_prices(raw: str | Mapping[str, Any]) -> dict[str, ModelPrice]:
    """A price table from JSON text or a mapping: ``{"model": [input, output], ...}``
    in US dollars per million tokens (``{"input": .., "output": ..}`` works too)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ConfigurationError(
                'RLM_PRICES must be JSON like {"gpt-4.1": [2.0, 8.0]} '
                "(US dollars per million input and output tokens)"
            ) from None
    if not isinstance(raw, Mapping):
        raise ConfigurationError("prices must map model names to [input, output] prices")
    table: dict[str, ModelPrice] = {}
    for name, price in raw.items():
        if isinstance(price, ModelPrice):
            table[str(name)] = price
            continue
        if isinstance(price, Mapping):
            price = [price.get("input"), price.get("output")]
        if (
            not isinstance(price, (list, tuple))
            or len(price) != 2
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in price
            )
        ):
            raise ConfigurationError(
                f"price of {name!r} must be [input, output]: two non-negative numbers "
                "(US dollars per million tokens)"
            )
        table[str(name)] = ModelPrice(float(price[0]), float(price[1]))
    return table


@dataclass(frozen=True)
class RLMConfig:
    """Everything an RLM run needs to know. Build with :meth:`from_env`."""

    model: str | None = None
    sub_model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    backend: str = "auto"
    #: The restricted backend's isolation: "inprocess" or "process" (a worker process).
    restricted_isolation: str = "inprocess"
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
    #: Levels of runs: 1 is the root alone (``rlm_query`` is a plain sub-call), 2
    #: lets the root start child RLMs but not grandchildren.
    max_depth: int = 1
    #: The children's root model (default: the sub model).
    child_model: str | None = None
    #: US dollars per million tokens, per model (see :func:`parse_prices`); needed
    #: for every model a run uses when ``limits.max_cost_usd`` is set.
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    #: The root model's context window in tokens; None turns compaction off.
    root_context_window: int | None = None
    #: The share of the window at which older turns are summarized.
    compaction_threshold: float = 0.85
    #: Times an answer that does not match the answer schema goes back to the model.
    max_answer_retries: int = 2

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
        prices = _env("RLM_PRICES", None, dotfile)
        if prices is not None:
            values["prices"] = parse_prices(prices)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: v for k, v in values.items() if v is not None}).checked()

    def checked(self) -> RLMConfig:
        if self.backend not in BACKENDS:
            raise ConfigurationError(
                f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if self.restricted_isolation not in RESTRICTED_ISOLATIONS:
            raise ConfigurationError(
                f"unknown restricted_isolation {self.restricted_isolation!r}; choose one of "
                + ", ".join(RESTRICTED_ISOLATIONS)
            )
        if self.cell_timeout <= 0 or self.request_timeout <= 0:
            raise ConfigurationError("timeouts must be positive")
        if self.max_iterations < 1:
            raise ConfigurationError("max_iterations must be at least 1")
        if self.root_context_window is not None and self.root_context_window < 256:
            raise ConfigurationError("root_context_window must be at least 256 tokens")
        if not 0.1 <= self.compaction_threshold <= 1.0:
            raise ConfigurationError("compaction_threshold must be between 0.1 and 1")
        if self.max_answer_retries < 0:
            raise ConfigurationError("max_answer_retries must be 0 or more")
        if self.max_depth < 1:
            raise ConfigurationError("max_depth must be at least 1 (1: no child RLMs)")
        if not all(isinstance(p, ModelPrice) for p in self.prices.values()):
            object.__setattr__(self, "prices", parse_prices(self.prices))
        _check_limits(self.limits)
        return self

    def unpriced_models(self) -> list[str]:
        """Models a run would use that the price table does not list."""
        models = {self.model, self.effective_sub_model}
        if self.max_depth > 1:
            models.add(self.child_model or self.effective_sub_model)
        return sorted(m for m in models if m and m not in self.prices)

    def with_(self, **changes: Any) -> RLMConfig:
        return replace(self, **changes).checked()

    @property
    def effective_sub_model(self) -> str | None:
        return self.sub_model or self.model


def _check_limits(limits: SessionLimits) -> None:
    for name in (
        "max_sub_calls",
        "max_tokens",
        "max_children",
        "max_consecutive_errors",
    ):
        value = getattr(limits, name)
        if value is not None and value < 0:
            raise ConfigurationError(f"{name} must be 0 or more (or None for no limit)")
    for name in ("max_cost_usd", "max_wall_time_s"):
        value = getattr(limits, name)
        if value is not None and value <= 0:
            raise ConfigurationError(f"{name} must be positive (or None for no limit)")
    if limits.max_live_children < 1:
        raise ConfigurationError("max_live_children must be at least 1")
