"""The attack corpus, the harness that runs it against a backend, and its report.

Use :func:`rlm.security.check.run_security_check` (``rlm security-check``) to
attack a deployment, or :func:`run_corpus` with :class:`Target` objects from a test.
See SECURITY.md for the threat model these attacks check.
"""

from rlm.security.corpus import MARKER, CorpusError, Expectation, Payload, load_corpus
from rlm.security.harness import SecurityHarness, run_corpus
from rlm.security.hostside import Canary
from rlm.security.report import PayloadResult, SuiteReport, TargetReport
from rlm.security.targets import Target, select_targets

__all__ = [
    "MARKER",
    "Canary",
    "CorpusError",
    "Expectation",
    "Payload",
    "PayloadResult",
    "SecurityHarness",
    "SuiteReport",
    "Target",
    "TargetReport",
    "load_corpus",
    "run_corpus",
    "select_targets",
]
