"""The model client: chat completions against one OpenAI-compatible endpoint.

Plain completions, the bulk of a run, are posted over :mod:`rlm.provider.transport`
with the URL, auth and headers the ``openai`` SDK would use (:func:`sdk_headers`):
the SDK's per-request CPU, not the network, is what limits a wide ``llm_batch``
(measured there). The SDK itself is imported only to stream the root model's
replies: importing it costs about 0.6 s, most of what starting ``rlm`` used to
cost. Both paths turn failures into one :class:`ModelCallFailure` vocabulary.

The client does no retrying of its own (the SDK's is turned off): the batcher owns
retries, backoff and Retry-After for sub-calls, and the root loop for root calls, so
that every retry is counted and bounded in one place.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam

from rlm.errors import ConfigurationError, ModelCallError
from rlm.failures import RETRYABLE_KINDS, FailureKind
from rlm.provider.transport import HTTPPool, TransportError, environment_proxy


@dataclass
class ChatResult:
    """One completion: its text and the tokens the provider reported."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
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
        kind: FailureKind,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, kind=kind, status=status)
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


def failure_for_status(
    status: int, detail: str, headers: Mapping[str, str] | None, model: str
) -> ModelCallFailure:
    """The failure an HTTP error status means, with a message that says what to do."""
    detail = detail[:300]
    if status == 429:
        return ModelCallFailure(
            f"rate limited by the provider for {model!r}",
            kind="rate_limit",
            status=status,
            retry_after=_retry_after(headers),
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
            retry_after=_retry_after(headers),
        )
    if 300 <= status < 400:
        where = (headers.get("location") or "")[:200] if headers is not None else ""
        return ModelCallFailure(
            f"the model server redirected the request ({status}"
            f"{f' to {where}' if where else ''}); redirects are not followed, so that "
            "the API key goes nowhere else: set OPENAI_BASE_URL to the final address",
            kind="bad_request",
            status=status,
        )
    lowered = detail.lower()
    kind: FailureKind = (
        "context_length" if "context" in lowered and "length" in lowered else "bad_request"
    )
    return ModelCallFailure(
        f"the provider rejected the request ({status}) for {model!r}: {detail}",
        kind=kind,
        status=status,
    )


def _unreachable(model: str, why: object) -> ModelCallFailure:
    return ModelCallFailure(
        f"cannot reach the model server for {model!r}: {why}; "
        "check OPENAI_BASE_URL and that the server is up",
        kind="connection",
    )


def _timed_out(model: str) -> ModelCallFailure:
    return ModelCallFailure(f"model {model!r} did not answer in time", kind="timeout")


def classify(exc: BaseException, model: str) -> ModelCallFailure:
    """Turn an SDK exception into a ModelCallFailure with a message that says what to do."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return _timed_out(model)
    if isinstance(exc, openai.APIConnectionError):
        return _unreachable(model, exc)
    if isinstance(exc, openai.APIStatusError):
        return failure_for_status(exc.status_code, str(exc), exc.response.headers, model)
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


DEFAULT_BASE_URL = "https://api.openai.com/v1"

_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def _sdk_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openai")
    except PackageNotFoundError:  # pragma: no cover - openai is a dependency
        return "unknown"


def sdk_base_url(base_url: str | None) -> str:
    """The endpoint the SDK would call: the argument, ``OPENAI_BASE_URL``, or OpenAI's."""
    return base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def sdk_headers(api_key: str) -> dict[str, str]:
    """The headers ``openai.AsyncOpenAI`` sends with a request, without importing it.

    Its ``default_headers`` and ``auth_headers``: the key, the organization and project
    from the environment when set, and the ``User-Agent`` and ``X-Stainless-*`` lines
    that say the request comes from the SDK (tests compare them with the SDK's own).
    """
    version = _sdk_version()
    machine = platform.machine().lower()
    headers = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "User-Agent": f"AsyncOpenAI/Python {version}",
        "X-Stainless-Lang": "python",
        "X-Stainless-Package-Version": version,
        "X-Stainless-OS": platform.system() or "Unknown",
        "X-Stainless-Arch": _ARCH.get(machine, f"other:{machine}" if machine else "unknown"),
        "X-Stainless-Runtime": platform.python_implementation(),
        "X-Stainless-Runtime-Version": platform.python_version(),
        "X-Stainless-Async": "async:asyncio",
    }
    organization = os.environ.get("OPENAI_ORG_ID")
    project = os.environ.get("OPENAI_PROJECT_ID")
    if organization:
        headers["OpenAI-Organization"] = organization
    if project:
        headers["OpenAI-Project"] = project
    headers["Authorization"] = f"Bearer {api_key}"
    return headers


class ModelClient:
    """Chat completions against one OpenAI-compatible endpoint.

    A client belongs to one event loop at a time (see :class:`rlm.provider.transport.HTTPPool`);
    close it with :meth:`aclose`.
    """

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
        self._api_key = api_key
        # The SDK, for streaming only, made on first use.
        self._sdk: openai.AsyncOpenAI | None = None
        self._completions_url = f"{sdk_base_url(base_url).rstrip('/')}/chat/completions"
        self._http = HTTPPool(
            headers=sdk_headers(api_key),
            # The environment's proxy, as the SDK's own client would use.
            proxy=environment_proxy(self._completions_url),
        )

    async def chat(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        timeout: float | None = None,
        **params: Any,
    ) -> ChatResult:
        """One completion. Raises ModelCallFailure, classified."""
        body = json.dumps({"model": model, "messages": messages, **params}).encode()
        try:
            reply = await self._http.post(
                self._completions_url,
                body,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except TransportError as exc:
            raise (
                _timed_out(model) if exc.kind == "timeout" else _unreachable(model, exc)
            ) from exc
        if reply.status >= 300:
            detail = reply.body[:300].decode("utf-8", "replace")
            raise failure_for_status(
                reply.status, f"Error code: {reply.status} - {detail}", reply.headers, model
            )
        try:
            payload = json.loads(reply.body)
        except ValueError as exc:
            raise ModelCallFailure(
                f"model {model!r} answered with something that is not JSON: {exc}",
                kind="bad_response",
            ) from None
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
        import openai

        if self._sdk is None:
            self._sdk = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=sdk_base_url(self.base_url),
                timeout=self.timeout,
                max_retries=0,
            )
        try:
            stream = await self._sdk.chat.completions.create(
                model=model,
                # Plain dicts are what the SDK sends; its TypedDicts only describe them.
                messages=cast("list[ChatCompletionMessageParam]", messages),
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
        try:
            await self._http.aclose()
        finally:
            if self._sdk is not None:
                await self._sdk.close()
