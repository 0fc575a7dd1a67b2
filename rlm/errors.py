"""The exceptions rlm raises to its callers. Each message says what to do next."""

from __future__ import annotations

from rlm.failures import FailureKind


class RLMError(Exception):
    """Base class for every error rlm raises on purpose."""


class ConfigurationError(RLMError):
    """Nothing (or something wrong) is configured: no model, no key, no base URL."""


class ModelCallError(RLMError):
    """A call to the model provider failed and retrying would not help (or did not)."""

    def __init__(self, message: str, *, kind: FailureKind = "error", status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status


class SandboxError(RLMError):
    """A sandbox could not be started, or died, or broke the protocol."""


class SandboxUnavailable(SandboxError):
    """The requested backend cannot run here (no engine, no image, no runtime)."""


class ProtocolError(SandboxError):
    """The sandbox sent a frame that is malformed, oversized or not allowed."""


class VariableNotFound(SandboxError):
    """``FINAL_VAR(name)`` named a variable the sandbox does not have."""


class BridgeRefusal(RLMError):
    """The host refused a sub-call from model code (bad arguments, a limit, a budget).

    Its message goes back to the model's code as ``RLMCallError``.
    """


class BudgetExceeded(BridgeRefusal):
    """A session budget (sub-calls, tokens, prompt size, batch size) ran out."""


class SnapshotError(SandboxError):
    """A session snapshot could not be made or restored (damaged, forged, too large)."""
