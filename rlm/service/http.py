"""What every route shares: errors in OpenAI's shape, bounded bodies, the caller.

A client of an OpenAI-compatible API reads ``{"error": {"message", "type",
"code"}}``; the SDKs turn it into their own exceptions, so every 4xx and 5xx here
has that shape, with a message that says what to do.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from rlm.service.config import Tenant
    from rlm.service.quotas import QuotaExceeded

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """Ends a request with an error response."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.code, self.headers, self.extra)


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


def error_response(
    status: int,
    message: str,
    code: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    return JSONResponse({**error_body(status, message, code), **(extra or {})}, status, headers)


def quota_error(exc: QuotaExceeded) -> APIError:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    code = "profile_not_allowed" if exc.quota == "profile" else f"quota_{exc.quota}"
    return APIError(exc.status, exc.message, code, headers=headers)


def caller(request: Request) -> Tenant:
    """The tenant whose bearer token the request carries; 401 without one."""
    tenant = request.app.state.service.auth.tenant(request.headers.get("authorization"))
    if tenant is None:
        missing = "authorization" not in request.headers
        raise APIError(
            401,
            "no bearer token: send Authorization: Bearer <your token>"
            if missing
            else "the bearer token is not valid",
            "missing_api_key" if missing else "invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="rlm"'},
        )
    return tenant  # type: ignore[no-any-return]


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it passes ``limit`` bytes
    (before it is all read, whatever Content-Length claims)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    # Starlette's form parser reads the body again from here.
    request._body = body
    return body


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server takes ({limit} bytes); "
        "send a smaller context",
        "request_too_large",
    )


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    body = await read_body(request, limit)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:
        raise APIError(400, "the body's JSON is nested too deeply", "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object", "invalid_json")
    return data


def context_size(context: Any) -> int:
    """Bytes of a context as its text (a str) or its JSON."""
    if isinstance(context, str):
        return len(context.encode("utf-8", "surrogatepass"))
    return len(json.dumps(context, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def check_context(context: Any) -> None:
    if not isinstance(context, (str, list, dict)):
        raise APIError(
            400,
            "context must be a string, a JSON array or a JSON object",
            "invalid_context",
        )
