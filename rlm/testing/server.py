"""An offline OpenAI-compatible model server on loopback.

It is a real HTTP server (uvicorn, in a thread of its own with its own event loop)
that rlm's real model client talks to (the ``openai`` SDK for streams, its headers
over aiohttp for plain completions), so tests, benchmarks and ``rlm demo`` exercise
the same code paths as a paid provider. Given an ``api_key``, it checks the bearer
token as a provider would. It serves two kinds of "model":

- the **root** model (any model name starting with ``root``, or the one given as
  ``root_model``) drives a real RLM trajectory: inspect the context, chunk it,
  ``llm_batch`` over the chunks, combine, answer (see :mod:`rlm.testing.policy`);
  a test can instead give it a script of replies to play in order, and give
  other root models (a child RLM's, say) scripts of their own with ``scripts``;
- every other name is a **sub** model that answers chunk questions deterministically
  (finds "the X is Y" for "What is the X?").

Faults are injected per request: a queue of :class:`Fault` rules (429 with
Retry-After, 500, a hang) matched by model or prompt text, and markers inside a
prompt (``[[fail:500]]``, ``[[fail:429]]``, ``[[hang]]``, ``[[sleep:0.5]]``,
``[[malformed]]`` for a 200 with no choices) for
failing chosen items of a batch.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from rlm.testing.policy import root_reply, sub_reply

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_MARKER = re.compile(r"\[\[(fail|hang|sleep|malformed)(?::([0-9.]+))?\]\]")


@dataclass
class Fault:
    """Answer the next ``times`` matching requests with an error (or a hang).

    ``status`` 0 means hang until the client gives up; ``match`` is a substring of
    the last message's text (None matches every request); ``model`` limits the rule
    to one model name; ``location`` is sent as a ``Location`` header (with a 3xx
    status, a redirect).
    """

    status: int = 500
    times: int = 1
    retry_after: float | None = None
    match: str | None = None
    model: str | None = None
    location: str | None = None


@dataclass
class ServerStats:
    """What the server saw. Read it from any thread; only the server writes it."""

    requests: int = 0
    completed: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    disconnects: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    prompts: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    #: The largest request body seen per model, in bytes.
    largest_request: Counter[str] = field(default_factory=Counter)
    #: System messages seen, per model (each distinct one once).
    systems: dict[str, set[str]] = field(default_factory=dict)
    #: Requests per User-Agent header.
    user_agents: Counter[str] = field(default_factory=Counter)
    #: Each client connection (address, port) that sent a completion request.
    connections: set[tuple[str, int]] = field(default_factory=set)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


class OfflineModelServer:
    """Start with ``with OfflineModelServer() as server:``; point clients at ``base_url``."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        root_model: str = "rlm-offline-root",
        root_script: list[str] | None = None,
        scripts: dict[str, list[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
    ) -> None:
        self.latency = latency
        #: When set, completions need ``Authorization: Bearer <api_key>``, else 401.
        self.api_key = api_key
        self.root_model = root_model
        self.root_script = list(root_script) if root_script is not None else None
        #: Per root model name, a script that wins over ``root_script`` and the policy.
        self.scripts = {name: list(script) for name, script in (scripts or {}).items()}
        self.stats = ServerStats()
        self.faults: list[Fault] = []
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._socket is None:
            raise RuntimeError("the server is not started")
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> OfflineModelServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(2048)
        self._socket = sock
        config = uvicorn.Config(
            self._app,
            log_level="error",
            lifespan="off",
            interface="asgi3",
            access_log=False,
            # Nothing a test reads, and each costs the server time per request.
            proxy_headers=False,
            server_header=False,
            date_header=False,
            backlog=2048,
            # Longer than the client keeps idle connections (rlm.provider.transport), so
            # the client, not the server, is the one to drop them.
            timeout_keep_alive=75,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the offline model server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> OfflineModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault injection -------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def _take_fault(self, model: str, text: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.model is not None and fault.model != model:
                    continue
                if fault.match is not None and fault.match not in text:
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    # -- HTTP ------------------------------------------------------------------------

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/")
        if scope["method"] == "GET" and path == "/v1/models":
            names = [self.root_model, "rlm-offline-sub"]
            await _json(send, 200, {"object": "list", "data": [{"id": n} for n in names]})
            return
        if scope["method"] != "POST" or path != "/v1/chat/completions":
            await _json(send, 404, {"error": {"message": f"no route {path}"}})
            return
        headers = dict(scope["headers"])
        self.stats.user_agents[headers.get(b"user-agent", b"").decode("latin-1")] += 1
        if scope.get("client"):
            self.stats.connections.add(tuple(scope["client"]))
        if self.api_key is not None and headers.get(b"authorization") != (
            b"Bearer " + self.api_key.encode()
        ):
            self.stats.by_status[401] += 1
            error = {"message": "Incorrect API key provided", "code": "invalid_api_key"}
            await _json(send, 401, {"error": error})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            request = json.loads(body)
            model = str(request["model"])
            messages = request["messages"]
            text = str(messages[-1].get("content") or "")
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            await _json(send, 400, {"error": {"message": "malformed chat request"}})
            return
        self.stats.requests += 1
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        self.stats.models[model] += 1
        self.stats.largest_request[model] = max(self.stats.largest_request[model], len(body))
        self.stats.prompts[text] += 1
        if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
            seen = self.stats.systems.setdefault(model, set())
            seen.add(str(messages[0].get("content") or ""))
        try:
            await self._complete(request, model, messages, text, receive, send)
        finally:
            self.stats.in_flight -= 1

    async def _complete(
        self,
        request: dict[str, Any],
        model: str,
        messages: list[dict[str, Any]],
        text: str,
        receive: Receive,
        send: Send,
    ) -> None:
        delay = self.latency
        status, retry_after, location = 200, None, None
        fault = self._take_fault(model, text)
        if fault is not None:
            status, retry_after, location = fault.status, fault.retry_after, fault.location
        malformed = False
        for kind, arg in _MARKER.findall(text):
            if kind == "malformed":
                malformed = True
            elif kind == "fail":
                status = int(float(arg or 500))
            elif kind == "hang":
                status = 0
            elif kind == "sleep":
                delay += float(arg or 0)
        if status == 0:
            delay = 3600.0
        if delay > 0 and not await _sleep_unless_disconnected(delay, receive):
            self.stats.disconnects += 1
            return
        if status != 200:
            self.stats.by_status[status] += 1
            headers = [] if retry_after is None else [(b"retry-after", f"{retry_after:g}".encode())]
            if location is not None:
                headers.append((b"location", location.encode()))
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            await _json(
                send, status, {"error": {"message": f"injected {status}", "type": kind}}, headers
            )
            return
        if malformed:
            self.stats.by_status[200] += 1
            await _json(send, 200, {"id": "x", "object": "chat.completion", "choices": []})
            return
        reply = self._root_reply(messages, model) if self._is_root(model) else sub_reply(text)
        self.stats.by_status[200] += 1
        self.stats.completed += 1
        usage = {
            "prompt_tokens": sum(_tokens(str(m.get("content") or "")) for m in messages),
            "completion_tokens": _tokens(reply),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if request.get("stream"):
            await _stream(send, model, reply, usage)
        else:
            await _json(send, 200, _completion(model, reply, usage))

    def _is_root(self, model: str) -> bool:
        return model == self.root_model or model.startswith("root") or model in self.scripts

    def _root_reply(self, messages: list[dict[str, Any]], model: str | None = None) -> str:
        step = sum(1 for m in messages if m.get("role") == "assistant")
        script = self.scripts.get(model) if model is not None else None
        if script is None:
            script = self.root_script
        if script is not None:
            if step < len(script):
                return script[step]
            return script[-1] if script else ""
        return root_reply(messages)


async def _sleep_unless_disconnected(seconds: float, receive: Receive) -> bool:
    """Sleep; False if the client went away first (a cancelled request).

    The request's body has been read, so ``receive`` now only returns when the client
    disconnects. Waiting on it under a timeout, in this task, costs the server less
    than a watcher task per request would: at N = c = 100 the server's CPU per
    request is part of every batch's wall time in bench/bench_batcher.py.
    """
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return True
    return False


def _completion(model: str, reply: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-offline-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


async def _json(
    send: Send,
    status: int,
    payload: dict[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _stream(send: Send, model: str, reply: str, usage: dict[str, int]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    base = {"id": "chatcmpl-offline", "object": "chat.completion.chunk", "model": model}
    created = int(time.time())
    pieces = re.findall(r"\S*\s*", reply) or [reply]
    for piece in pieces:
        if not piece:
            continue
        chunk = {
            **base,
            "created": created,
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        await send(
            {
                "type": "http.response.body",
                "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                "more_body": True,
            }
        )
    final = {
        **base,
        "created": created,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    tail = {**base, "created": created, "choices": [], "usage": usage}
    body = f"data: {json.dumps(final)}\n\ndata: {json.dumps(tail)}\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": body.encode()})
