"""The OpenAI-compatible face: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Any OpenAI client can call an RLM: ``model`` names a profile; the context is
``rlm.context`` in the body (the SDKs' ``extra_body={"rlm": {"context": ...}}``),
else every message before the last user message; the query is the last user
message. The reply is a ``chat.completion`` (or, streamed, its chunks) whose
content is the run's answer, with the usage of the whole run tree and an ``rlm``
object naming the run, which is also readable at ``/v1/runs/{id}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rlm.service import sse
from rlm.service.http import APIError, caller, check_context, context_size, error_body, read_json

if TYPE_CHECKING:
    from rlm.service.config import Profile, Tenant
    from rlm.service.service import Service
    from rlm.service.store import RunRecord

#: How a finished run's status reads to an OpenAI client that did not get an answer.
_FAILED = {
    "failed": (502, "run_failed"),
    "cancelled": (409, "run_cancelled"),
    "interrupted": (503, "run_interrupted"),
}


def profile_for(service: Service, tenant: Tenant, name: str) -> Profile:
    """The profile ``name`` if the tenant may use it; 403 otherwise (a profile that
    does not exist is one the tenant does not have)."""
    profile = service.config.profiles.get(name)
    if profile is None or name not in tenant.profiles:
        raise APIError(
            403,
            f"profile {name!r} is not one of yours; GET /v1/models lists yours "
            f"({', '.join(tenant.profiles)})",
            "model_not_allowed",
        )
    return profile


async def list_models(request: Request) -> Response:
    tenant = caller(request)
    service: Service = request.app.state.service
    created = int(service.started)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "rlm"}
        for name in tenant.profiles
        if name in service.config.profiles
    ]
    return JSONResponse({"object": "list", "data": data})


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))
    if content is None:
        return ""
    raise APIError(400, "a message's content must be a string or a list of parts", "invalid")


def parse_chat(body: dict[str, Any]) -> tuple[str, str, Any, bool, bool]:
    """(profile, query, context, stream, include_usage) from a chat request."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "model is required: the name of one of your profiles", "missing")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", "invalid_messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, "each message needs a role and content", "invalid_messages")
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        raise APIError(400, "no user message: the last one is the query", "invalid_messages")
    query = _text(messages[last].get("content"))
    if not query.strip():
        raise APIError(400, "the last user message (the query) is empty", "invalid_messages")
    extra = body.get("rlm")
    if extra is not None and not isinstance(extra, dict):
        raise APIError(400, 'rlm must be an object, like {"context": ...}', "invalid")
    if extra is not None and "context" in extra:
        context = extra["context"]
        check_context(context)
    else:
        context = [{"role": m["role"], "content": _text(m.get("content"))} for m in messages[:last]]
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "stream must be true or false", "invalid")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return model, query, context, stream, include_usage


async def chat_completions(request: Request) -> Response:
    tenant = caller(request)
    service: Service = request.app.state.service
    body = await read_json(request, service.config.server.max_body_bytes)
    name, query, context, stream, include_usage = parse_chat(body)
    profile = profile_for(service, tenant, name)
    record, _ = await service.manager.submit(
        tenant, profile, query, context, context_bytes=context_size(context)
    )
    if stream:
        chunks = _chunks(service, record, include_usage)
        return StreamingResponse(
            sse.with_keepalive(chunks, service.keepalive_s),
            media_type="text/event-stream",
            headers=sse.HEADERS,
        )
    waiting = asyncio.ensure_future(service.manager.wait(record.id))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not waiting.done():
        # The client left: nobody will read the answer, so stop paying for it.
        waiting.cancel()
        await service.manager.cancel(record, "the client disconnected")
        return Response(status_code=499)
    if record.status != "succeeded":
        status, code = _FAILED.get(record.status, (500, "run_failed"))
        message = record.error or f"the run ended {record.status}"
        body = {**error_body(status, message, code), "rlm": _rlm(record)}
        return JSONResponse(body, status)
    return JSONResponse(completion(record))


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _usage(record: RunRecord) -> dict[str, int]:
    models = (record.usage or {}).get("by_model") or {}
    prompt = sum(int(m.get("prompt_tokens", 0)) for m in models.values())
    completion_tokens = sum(int(m.get("completion_tokens", 0)) for m in models.values())
    if not models and record.usage:
        prompt = int(record.usage.get("prompt_tokens", 0))
        completion_tokens = int(record.usage.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def _finish_reason(record: RunRecord) -> str:
    outcome = (record.usage or {}).get("outcome") or {}
    return "length" if outcome.get("status") == "limit" else "stop"


def _rlm(record: RunRecord) -> dict[str, Any]:
    outcome = (record.usage or {}).get("outcome") or {}
    return {
        "run_id": record.id,
        "status": record.status,
        "result": outcome.get("status"),
        "sub_calls": (record.usage or {}).get("sub_calls"),
    }


def completion(record: RunRecord) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion",
        "created": int(record.created_at),
        "model": record.profile,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": record.answer or ""},
                "logprobs": None,
                "finish_reason": _finish_reason(record),
            }
        ],
        "usage": _usage(record),
        "rlm": _rlm(record),
    }


async def _chunks(service: Service, record: RunRecord, include_usage: bool) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return sse.message(
            {
                "id": f"chatcmpl-{record.id}",
                "object": "chat.completion.chunk",
                "created": int(record.created_at),
                "model": record.profile,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                "rlm": {"run_id": record.id},
            }
        )

    ended = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        await service.manager.wait(record.id)
        ended = True
        if record.status != "succeeded":
            status, code = _FAILED.get(record.status, (500, "run_failed"))
            message = record.error or f"the run ended {record.status}"
            yield sse.message({**error_body(status, message, code), "rlm": _rlm(record)})
            return
        yield chunk({"content": record.answer or ""})
        yield chunk({}, _finish_reason(record))
        if include_usage:
            final = json.loads(chunk({})[len("data: ") :])
            final.update(choices=[], usage=_usage(record), rlm=_rlm(record))
            yield sse.message(final)
        yield sse.message("[DONE]")
    finally:
        if not ended:
            # The client left mid-run (the stream was closed): stop the run.
            service.manager.cancel_soon(record.id, "the client disconnected")
