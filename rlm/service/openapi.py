"""The OpenAPI document of ``rlm serve`` (``GET /openapi.json``), written by hand
so it says what the routes promise rather than what a framework can infer."""

from __future__ import annotations

from typing import Any, Final


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    what = {
        400: "malformed request",
        401: "missing or wrong bearer token",
        403: "profile not allowed, or a quota waiting will not help",
        404: "no such run (or another tenant's)",
        409: "the run has already ended",
        413: "body or context too large",
        429: "over a quota; see Retry-After",
    }
    return {str(c): _json(_ref("Error"), what[c]) for c in codes}


_SSE = {"text/event-stream": {"schema": {"type": "string"}}}
_RUN_ID = [{"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]

OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "rlm serve",
        "version": "1",
        "description": "Recursive Language Model runs for many tenants. Every /v1/ route "
        "needs Authorization: Bearer <token>.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "code": {"type": "string"},
                        },
                        "required": ["message", "type", "code"],
                    }
                },
            },
            "Context": {
                "description": "a string, a JSON array or a JSON object",
                "type": ["string", "array", "object"],
            },
            "RunRequest": {
                "type": "object",
                "required": ["profile", "query"],
                "properties": {
                    "profile": {"type": "string"},
                    "query": {"type": "string"},
                    "context": _ref("Context"),
                },
            },
            "Run": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "object": {"const": "rlm.run"},
                    "profile": {"type": "string"},
                    "status": {
                        "enum": [
                            "queued",
                            "running",
                            "succeeded",
                            "failed",
                            "cancelled",
                            "interrupted",
                        ]
                    },
                    "query": {"type": "string"},
                    "answer": {"type": ["string", "null"]},
                    "error": {"type": ["string", "null"]},
                    "usage": {"type": ["object", "null"]},
                    "result": {"type": ["object", "null"]},
                    "created_at": {"type": "number"},
                    "started_at": {"type": ["number", "null"]},
                    "finished_at": {"type": ["number", "null"]},
                },
            },
            "ChatRequest": {
                "type": "object",
                "required": ["model", "messages"],
                "properties": {
                    "model": {"type": "string", "description": "a profile name"},
                    "messages": {"type": "array", "items": {"type": "object"}},
                    "stream": {"type": "boolean"},
                    "rlm": {
                        "type": "object",
                        "properties": {"context": _ref("Context")},
                    },
                },
            },
        },
    },
    "security": _AUTH,
    "paths": {
        "/v1/chat/completions": {
            "post": {
                "summary": "An RLM run as an OpenAI chat completion",
                "requestBody": {"content": {"application/json": {"schema": _ref("ChatRequest")}}},
                "responses": {
                    "200": {
                        "description": "a chat.completion, or with stream: chunks as SSE",
                        "content": {"application/json": {"schema": {"type": "object"}}, **_SSE},
                    },
                    **_errors(400, 401, 403, 413, 429),
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The caller's profiles",
                "responses": {"200": _json({"type": "object"}, "a list of models")},
            }
        },
        "/v1/runs": {
            "post": {
                "summary": "Start a run",
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "content": {
                        "application/json": {"schema": _ref("RunRequest")},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "profile": {"type": "string"},
                                    "query": {"type": "string"},
                                    "context": {"type": "string", "format": "binary"},
                                },
                            }
                        },
                    }
                },
                "responses": {
                    "202": _json({"type": "object"}, "accepted: its id"),
                    **_errors(400, 401, 403, 413, 429),
                },
            },
            "get": {
                "summary": "The caller's latest runs",
                "responses": {"200": _json({"type": "object"}, "a list of runs")},
            },
        },
        "/v1/runs/{run_id}": {
            "parameters": _RUN_ID,
            "get": {
                "summary": "A run's status, answer, usage and error",
                "responses": {"200": _json(_ref("Run"), "the run"), **_errors(401, 404)},
            },
            "delete": {
                "summary": "Cancel a run",
                "responses": {"200": _json(_ref("Run"), "cancelled"), **_errors(401, 404, 409)},
            },
        },
        "/v1/runs/{run_id}/events": {
            "parameters": _RUN_ID,
            "get": {
                "summary": "The run's events from the start, then live, as SSE",
                "responses": {
                    "200": {"description": "ends when the run has ended", "content": _SSE},
                    **_errors(401, 404),
                },
            },
        },
        "/v1/usage": {
            "get": {
                "summary": "The caller's usage and quotas",
                "responses": {"200": _json({"type": "object"}, "usage")},
            }
        },
        "/healthz": {
            "get": {"security": [], "responses": {"200": {"description": "the server is up"}}}
        },
        "/metrics": {
            "get": {
                "security": [],
                "summary": "Prometheus text; an operator token when one is configured",
                "responses": {"200": {"description": "metrics"}},
            }
        },
    },
}
