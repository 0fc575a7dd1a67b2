"""The HTTP app of ``rlm serve`` (Starlette): runs, their events, usage, models,
health, metrics and the OpenAPI document; chat completions are in
:mod:`rlm.service.openai_api`."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rlm.errors import ConfigurationError
from rlm.service import sse
from rlm.service.http import (
    APIError,
    caller,
    check_context,
    context_size,
    error_response,
    quota_error,
    read_body,
    read_json,
)
from rlm.service.metrics import CONTENT_TYPE
from rlm.service.openai_api import chat_completions, list_models, profile_for
from rlm.service.openapi import OPENAPI
from rlm.service.quotas import QuotaExceeded
from rlm.service.runs import TERMINAL, ShuttingDown
from rlm.service.service import Service, running_service
from rlm.viewer.service_routes import viewer_routes

if TYPE_CHECKING:
    from rlm.config import RLMConfig
    from rlm.service.config import ServiceConfig
    from rlm.service.store import RunRecord, Store

MAX_IDEMPOTENCY_KEY = 255
log = logging.getLogger("rlm.service")


def build_app(
    config: ServiceConfig, *, base: RLMConfig | None = None, store: Store | None = None
) -> Starlette:
    """The app for ``config``; its lifespan opens and closes the service."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running_service(config, base=base, store=store) as service:
            app.state.service = service
            yield

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/runs", create_run, methods=["POST"]),
        Route("/v1/runs", list_runs, methods=["GET"]),
        Route("/v1/runs/{run_id}", get_run, methods=["GET"]),
        Route("/v1/runs/{run_id}", cancel_run, methods=["DELETE"]),
        Route("/v1/runs/{run_id}/events", run_events, methods=["GET"]),
        Route("/v1/usage", usage, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *viewer_routes(),  # /view/: the trajectory viewer for the caller's runs
    ]
    handlers: dict[Any, Any] = {
        APIError: _api_error,
        HTTPException: _http_error,
        QuotaExceeded: _quota_error,
        ShuttingDown: _shutting_down,
        ConfigurationError: _misconfigured,
        Exception: _internal_error,
    }
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _quota_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QuotaExceeded)
    return quota_error(exc).response()


async def _shutting_down(request: Request, exc: Exception) -> Response:
    return error_response(
        503, "the server is shutting down; retry on another replica", "shutting_down"
    )


async def _misconfigured(request: Request, exc: Exception) -> Response:
    # The operator's own settings, nothing secret: the client can report it.
    return error_response(500, f"the server is misconfigured: {exc}", "server_misconfigured")


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; the server's log has the details", "internal_error")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(exc.status_code, message, code, dict(exc.headers or {}))


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


# -- runs ------------------------------------------------------------------------------


async def create_run(request: Request) -> Response:
    tenant = caller(request)
    service = service_of(request)
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise APIError(400, "Idempotency-Key must be 1 to 255 characters", "invalid_header")
    limit = service.config.server.max_body_bytes
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        profile_name, query, context = await _multipart_run(request, limit)
    else:
        body = await read_json(request, limit)
        profile_name, query = body.get("profile"), body.get("query")
        context = body.get("context", "")
    if not isinstance(profile_name, str) or not profile_name:
        raise APIError(400, "profile is required: the name of one of your profiles", "missing")
    if not isinstance(query, str) or not query.strip():
        raise APIError(400, "query is required: a non-empty string", "missing")
    check_context(context)
    profile = profile_for(service, tenant, profile_name)
    record, created = await service.manager.submit(
        tenant, profile, query, context, context_bytes=context_size(context), idempotency_key=key
    )
    headers = {} if created else {"Idempotent-Replayed": "true"}
    return JSONResponse(
        {"id": record.id, "object": "rlm.run", "status": record.status}, 202, headers
    )


async def _multipart_run(request: Request, limit: int) -> tuple[Any, Any, Any]:
    await read_body(request, limit)
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=limit)
    except HTTPException as exc:
        raise APIError(
            400, f"malformed multipart body: {exc.detail}", "invalid_multipart"
        ) from None
    try:
        raw = form.get("context")
        if isinstance(raw, UploadFile):
            data = await raw.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise APIError(
                    400, "the context file is not UTF-8 text", "invalid_context"
                ) from None
            name = (raw.filename or "").lower()
            if name.endswith(".json") or (raw.content_type or "").startswith("application/json"):
                try:
                    context: Any = json.loads(text)
                except (ValueError, RecursionError) as exc:  # nested too deeply: the same
                    raise APIError(
                        400, f"the context file is not valid JSON: {exc}", "invalid_context"
                    ) from None
            else:
                context = text
        else:
            context = raw if raw is not None else ""
        return form.get("profile"), form.get("query"), context
    finally:
        await form.close()


async def list_runs(request: Request) -> Response:
    tenant = caller(request)
    records = await service_of(request).store.list_runs(tenant.name)
    return JSONResponse({"object": "list", "data": [run_json(r) for r in records]})


async def _owned(request: Request) -> tuple[Service, RunRecord]:
    tenant = caller(request)
    service = service_of(request)
    run_id = request.path_params["run_id"]
    record = await service.store.get_run(tenant.name, run_id)
    if record is None:
        # Another tenant's run is not there for this one: the same 404.
        raise APIError(404, f"no run {run_id!r}", "run_not_found")
    return service, record


async def get_run(request: Request) -> Response:
    _, record = await _owned(request)
    return JSONResponse(run_json(record))


async def cancel_run(request: Request) -> Response:
    service, record = await _owned(request)
    if record.status in TERMINAL:
        raise APIError(409, f"the run has already ended ({record.status})", "run_ended")
    return JSONResponse(run_json(await service.manager.cancel(record)))


async def run_events(request: Request) -> Response:
    service, record = await _owned(request)
    after = 0
    last = request.headers.get("last-event-id") or request.query_params.get("after")
    if last is not None:
        if not last.isdigit():
            raise APIError(400, "Last-Event-ID (or after) must be an event number", "invalid")
        after = int(last)

    async def stream() -> AsyncIterator[str]:
        async for seq, event in service.manager.follow(record.tenant, record.id, after):
            yield sse.message(event, event=str(event.get("event")), id=seq)

    body = sse.with_keepalive(stream(), service.keepalive_s)
    return StreamingResponse(body, media_type="text/event-stream", headers=sse.HEADERS)


def run_json(record: RunRecord) -> dict[str, Any]:
    usage = dict(record.usage) if record.usage is not None else None
    outcome = usage.pop("outcome", None) if usage is not None else None
    return {
        "id": record.id,
        "object": "rlm.run",
        "profile": record.profile,
        "status": record.status,
        "query": record.query,
        "answer": record.answer,
        "error": record.error,
        "usage": usage,
        "total_tokens": record.total_tokens,
        "result": outcome,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
    }


# -- the rest --------------------------------------------------------------------------


async def usage(request: Request) -> Response:
    tenant = caller(request)
    service = service_of(request)
    now = time.time()
    midnight = now - now % 86400
    today = await service.store.tokens_used(tenant.name, midnight)
    total = await service.store.tokens_used(tenant.name, 0.0)
    return JSONResponse(
        {
            "object": "rlm.usage",
            "tenant": tenant.name,
            "tokens_today": today,
            "tokens_total": total,
            "runs_in_flight": service.manager.tenant_active(tenant.name),
            "quotas": await service.quotas.usage(tenant),
        }
    )


async def healthz(request: Request) -> Response:
    service = service_of(request)
    placement = service.placement
    engines = placement.stats() if placement is not None else []
    # Degraded: no engine is healthy, so Docker runs would fail.
    placeable = placement is None or placement.placeable
    return JSONResponse(
        {
            "status": "ok" if placeable else "degraded",
            "replica": service.config.server.replica_id,
            "runs_in_flight": len(service.manager.active),
            "uptime_s": round(time.time() - service.started, 1),
            "engines": engines,
        }
    )


async def metrics(request: Request) -> Response:
    from rlm.service.auth import metrics_allowed

    service = service_of(request)
    if not metrics_allowed(
        request.headers.get("authorization"), service.config.server.metrics_token_sha256
    ):
        raise APIError(401, "/metrics needs the operator's metrics token", "invalid_api_key")
    m = service.metrics
    for status, count in (await service.store.counts_by_status()).items():
        m.runs.labels(status).set(count)
    counts = service.manager.counts()
    stats = service.batcher.stats()
    m.live_runs.set(counts["queued"] + counts["running"])
    m.sandboxes.set(counts["sandboxes"])
    m.queue.labels("runs").set(counts["queued"])
    m.queue.labels("sub_calls").set(stats.waiting)
    m.sub_calls_in_flight.set(stats.in_flight)
    placement = service.placement
    m.pool_ready.set(placement.ready if placement is not None else 0)
    for engine in placement.stats() if placement is not None else []:
        m.engine_healthy.labels(engine["engine"]).set(1 if engine["healthy"] else 0)
        m.engine_sandboxes.labels(engine["engine"]).set(engine["live_sandboxes"])
    return Response(m.render(), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)
