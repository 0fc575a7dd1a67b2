"""Test support that ships with rlm: an offline OpenAI-compatible model server."""

from rlm.testing.server import Fault, OfflineModelServer, ServerStats

__all__ = ["Fault", "OfflineModelServer", "ServerStats"]
