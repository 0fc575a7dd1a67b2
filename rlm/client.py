"""The model client: one ``openai.AsyncOpenAI`` per endpoint, errors made plain.

The client does no retrying of its own (the SDK's is turned off): the batcher owns
retries, backoff and Retry-After for sub-calls, and the root loop for root calls, so
that every retry is counted and bounded in one place.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from rlm.errors import ConfigurationError, ModelCallError
from rlm.transport import sharded_http_client

#: Kinds of failure that a later try may fix.
RETRYABLE_KINDS = frozenset({"rate_limit", "server", "timeout", "connection"})


@dataclass
class ChatResult:
    """One completion: its text and the tokens the provider reported."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class ModelCallFailure(ModelCallError):
    """A failed provider call, classified so the caller can decide to retry."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, kind=kind, status=status)
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


def classify(exc: BaseException, model: str) -> ModelCallFailure:
    """Turn an SDK exception into a ModelCallFailure with a message that says what to do."""
    if isinstance(exc, openai.APITimeoutError):
        return ModelCallFailure(f"model {model!r} did not answer in time", kind="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return ModelCallFailure(
            f"cannot reach the model server for {model!r}: {exc}; "
            "check OPENAI_BASE_URL and that the server is up",
            kind="connection",
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = str(exc)[:300]
        if status == 429:
            return ModelCallFailure(
                f"rate limited by the provider for {model!r}",
                kind="rate_limit",
                status=status,
                retry_after=_retry_after(exc.response),
            )
        if status in (401, 403):
            return ModelCallFailure(
                f"the provider refused the API key ({status}); check OPENAI_API_KEY",
                kind="auth",
                status=status,
            )
        if status == 404:
            return ModelCallFailure(
                f"model {model!r} not found at the provider ({status}); check the model name",
                kind="not_found",
                status=status,
            )
        if status >= 500:
            return ModelCallFailure(
                f"the provider failed ({status}) for {model!r}: {detail}",
                kind="server",
                status=status,
                retry_after=_retry_after(exc.response),
            )
        lowered = detail.lower()
        kind = "context_length" if "context" in lowered and "length" in lowered else "bad_request"
        return ModelCallFailure(
            f"the provider rejected the request ({status}) for {model!r}: {detail}",
            kind=kind,
            status=status,
        )
    return ModelCallFailure(f"model call to {model!r} failed: {exc!r}", kind="error")


def _chat_result(payload: Any, model: str) -> ChatResult:
    """Read text and usage from a chat completion body, refusing a malformed one."""
    try:
        text = payload["choices"][0]["message"].get("content") or ""
        usage = payload.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise ModelCallFailure(
            f"model {model!r} returned a malformed completion: {str(payload)[:200]}",
            kind="bad_response",
        ) from None
    if not isinstance(text, str):
        raise ModelCallFailure(f"model {model!r} returned non-text content", kind="bad_response")
    return ChatResult(text, prompt_tokens, completion_tokens)


class ModelClient:
    """Chat completions against one OpenAI-compatible endpoint."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        if not api_key:
            raise ConfigurationError(
                "no API key: set OPENAI_API_KEY (in the environment or a .env file), "
                "or point OPENAI_BASE_URL at a local OpenAI-compatible server and set "
                "OPENAI_API_KEY to any value; `rlm demo` runs offline with no key"
            )
        self.base_url = base_url
        self.timeout = timeout
        # A sharded connection pool: with one pool, a wide llm_batch spends most of
        # its CPU walking the pool's connections (see rlm/transport.py).
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,
            http_client=sharded_http_client(),
        )

    async def chat(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        timeout: float | None = None,
        **params: Any,
    ) -> ChatResult:
        """One completion. Raises ModelCallFailure, classified.

        The request goes through the SDK's own ``post`` (its auth, headers, timeouts
        and status errors) but skips ``chat.completions.create``'s parameter
        transforms and typed response models: for a wide ``llm_batch`` that is about
        a quarter of the client's CPU per request (bench/bench_batcher.py), and the
        few fields read here are checked by hand instead.
        """
        try:
            response = await self._client.post(
                "/chat/completions",
                body={"model": model, "messages": messages, **params},
                cast_to=httpx2.Response,
                options={"timeout": timeout if timeout is not None else self.timeout},
            )
            payload = json.loads(response.content)
        except openai.OpenAIError as exc:
            raise classify(exc, model) from exc
        except ValueError as exc:
            raise ModelCallFailure(
                f"model {model!r} answered with something that is not JSON: {exc}",
                kind="bad_response",
            ) from exc
        return _chat_result(payload, model)

    async def chat_stream(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        timeout: float | None = None,
        **params: Any,
    ) -> AsyncIterator[str | ChatResult]:
        """Stream a completion: text deltas as they arrive, then the whole ChatResult."""
        try:
            stream = await self._client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                timeout=timeout if timeout is not None else self.timeout,
                stream=True,
                stream_options={"include_usage": True},
                **params,
            )
            parts: list[str] = []
            prompt_tokens = completion_tokens = 0
            async for chunk in stream:
                if chunk.usage is not None:
                    prompt_tokens = chunk.usage.prompt_tokens
                    completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    delta = choice.delta.content if choice.delta else None
                    if delta:
                        parts.append(delta)
                        yield delta
        except openai.OpenAIError as exc:
            raise classify(exc, model) from exc
        yield ChatResult("".join(parts), prompt_tokens, completion_tokens)

    async def aclose(self) -> None:
        await self._client.close()
