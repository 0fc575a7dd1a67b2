"""rlm: a safe, fast runtime for Recursive Language Models.

The public API::

    from rlm import RLM
    result = RLM(model="gpt-4.1").completion(context=text, query="...")
    print(result.answer, result.usage.to_dict())

A service running many sessions shares one :class:`Batcher` (over one
:class:`ModelClient`) and one warm :class:`ContainerPool` of :class:`ContainerSpec`
containers between its :class:`RLM` runs. Events passed to ``on_event`` are named
by :data:`EventName` (see :mod:`rlm.events`); failures carry a :data:`FailureKind`.
"""

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
from rlm.provider import ModelClient
from rlm.result import RLMResult
from rlm.session import SessionLimits
from rlm.subcalls import Batcher
from rlm.usage import ModelUsage, Usage

__version__ = "0.1.0"

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
    "ModelUsage",
    "RLMConfig",
    "RLMError",
    "RLMResult",
    "SandboxError",
    "SandboxUnavailable",
    "SessionLimits",
    "Usage",
]
