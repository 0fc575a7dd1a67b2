"""The model provider: an OpenAI-compatible API, reached over HTTP.

:class:`~rlm.provider.client.ModelClient` holds the key and speaks OpenAI's chat
completions (plain ones over :mod:`~rlm.provider.transport`'s aiohttp pool, streamed
ones through the ``openai`` SDK); every failure becomes one
:class:`~rlm.provider.client.ModelCallFailure` with a kind.
"""

from rlm.provider.client import ChatResult, ModelCallFailure, ModelClient

__all__ = ["ChatResult", "ModelCallFailure", "ModelClient"]
