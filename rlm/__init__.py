"""rlm: a safe, fast runtime for Recursive Language Models.

The public API::

    from rlm import RLM
    result = RLM(model="gpt-4.1").completion(context=text, query="...")
    print(result.answer, result.usage.to_dict())
"""

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
from rlm.result import RLMResult
from rlm.session import SessionLimits
from rlm.usage import ModelUsage, Usage

__version__ = "0.1.0"

__all__ = [
    "RLM",
    "BudgetExceeded",
    "ConfigurationError",
    "ModelCallError",
    "ModelUsage",
    "RLMConfig",
    "RLMError",
    "RLMResult",
    "SandboxError",
    "SandboxUnavailable",
    "SessionLimits",
    "Usage",
]
