"""rlm: a safe, fast runtime for Recursive Language Models.

The public API::

    from rlm import RLM
    result = RLM(model="gpt-4.1").completion(context=text, query="...")
    print(result.answer, result.usage.to_dict())

A service running many sessions shares one :class:`Batcher` (over one
:class:`ModelClient`) and one warm :class:`ContainerPool` of :class:`ContainerSpec`
containers between its :class:`RLM` runs. Events passed to ``on_event`` are named
by :data:`EventName` (see :mod:`rlm.events`); failures carry a :data:`FailureKind`.

The names are imported on first use: ``import rlm.cli`` must not pay for the
``openai`` SDK (most of a second) before ``rlm`` can take SIGTERM like Ctrl-C.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlm.backends.docker import ContainerPool, ContainerSpec
    from rlm.config import RLMConfig
    from rlm.core import RLM
    from rlm.errors import (
        BudgetExceeded,
        ConfigurationError,
        ModelCallError,
        RLMError,
        SandboxError,
        SandboxUnavailable,
    )
    from rlm.events import EventName
    from rlm.failures import FailureKind
    from rlm.limits import SessionLimits
    from rlm.provider import ModelClient
    from rlm.result import RLMResult, RunStatus
    from rlm.subcalls import Batcher
    from rlm.tools import Tool, ToolSet
    from rlm.tree import ModelPrice, StopReason
    from rlm.usage import ModelUsage, Usage

__version__ = "0.1.0"

#: Public name → the module that defines it.
_HOMES = {
    "RLM": "rlm.core",
    "Batcher": "rlm.subcalls",
    "BudgetExceeded": "rlm.errors",
    "ConfigurationError": "rlm.errors",
    "ContainerPool": "rlm.backends.docker",
    "ContainerSpec": "rlm.backends.docker",
    "EventName": "rlm.events",
    "FailureKind": "rlm.failures",
    "ModelCallError": "rlm.errors",
    "ModelClient": "rlm.provider",
    "ModelUsage": "rlm.usage",
    "RLMConfig": "rlm.config",
    "RLMError": "rlm.errors",
    "RLMResult": "rlm.result",
    "RunStatus": "rlm.result",
    "SandboxError": "rlm.errors",
    "SandboxUnavailable": "rlm.errors",
    "SessionLimits": "rlm.limits",
    "StopReason": "rlm.tree",
    "ModelPrice": "rlm.tree",
    "Tool": "rlm.tools",
    "ToolSet": "rlm.tools",
    "Usage": "rlm.usage",
}

__all__ = [
    "RLM",
    "Batcher",
    "BudgetExceeded",
    "ConfigurationError",
    "ContainerPool",
    "ContainerSpec",
    "EventName",
    "FailureKind",
    "ModelCallError",
    "ModelClient",
    "ModelPrice",
    "ModelUsage",
    "RLMConfig",
    "RLMError",
    "RLMResult",
    "RunStatus",
    "SandboxError",
    "SandboxUnavailable",
    "SessionLimits",
    "StopReason",
    "Tool",
    "ToolSet",
    "Usage",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'rlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
