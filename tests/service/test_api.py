"""`rlm serve` from outside, as clients call it: the openai SDK and plain HTTP against
the real server (a subprocess on loopback, SQLite, the offline model server as its
provider, restricted sandboxes for speed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from rlm.testing import Fault, OfflineModelServer
from tests.service.api_support import (
    METRICS_TOKEN,
    SCRIPTS,
    TOKENS,
    Service,
    slow_calls,
    sse_events,
    wait_for_the_slow_sub_call,
    wait_status,
)

CONTEXT = "first line\nthe code is 42\nlast line"


@pytest.fixture(scope="module")
def model_server() -> Iterator[OfflineModelServer]:
    with OfflineModelServer(scripts=SCRIPTS) as server:
        yield server


@pytest.fixture(scope="module")
def service(
    model_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    folder: Path = tmp_path_factory.mktemp("service")
    running = Service(folder, model_server, str(folder / "rlm.db")).start()
    try:
        yield running
    finally:
        assert running.stop() == 0


def sdk(service: Service, tenant: str = "acme", token: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{service.url}/v1", api_key=token or TOKENS[tenant], max_retries=0
    )


def test_chat_completion_with_the_openai_sdk(service: Service) -> None:
    reply = sdk(service).chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": "What is the code?"}],
        extra_body={"rlm": {"context": CONTEXT}},
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "42"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    run_id = (reply.model_extra or {})["rlm"]["run_id"]
    with service.client() as client:
        run = client.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["answer"] == "42"
    # Root and sub-calls summed: the run's usage, both models counted.
    assert run["usage"]["total_tokens"] == reply.usage.total_tokens
    assert set(run["usage"]["by_model"]) == {"root-main", "sub-main"}


def test_the_context_is_the_messages_before_the_last_user_message(service: Service) -> None:
    reply = sdk(service).chat.completions.create(
        model="rlm",
        messages=[
            {"role": "system", "content": "the code is 9"},
            {"role": "user", "content": "What is the code?"},
        ],
    )
    assert "9" in (reply.choices[0].message.content or "")


def test_streaming_chat_completion(service: Service) -> None:
    stream = sdk(service).chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": "What is the code?"}],
        extra_body={"rlm": {"context": CONTEXT}},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "42"
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_a_run_a_limit_stopped_finishes_with_length(service: Service) -> None:
    reply = sdk(service).chat.completions.create(
        model="limited",
        messages=[{"role": "user", "content": "What is the code?"}],
        extra_body={"rlm": {"context": CONTEXT}},
    )
    assert reply.choices[0].finish_reason == "length"
    assert (reply.model_extra or {})["rlm"]["result"] == "limit"


def test_a_streamed_run_cancelled_midway_ends_with_an_error(
    service: Service, model_server: OfflineModelServer
) -> None:
    before = slow_calls(model_server)
    stream = sdk(service).chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "Wait."}], stream=True
    )
    first = next(iter(stream))
    run_id = (first.model_extra or {})["rlm"]["run_id"]
    wait_for_the_slow_sub_call(model_server, before)
    with service.client() as client:
        assert client.delete(f"/v1/runs/{run_id}").status_code == 200
    with pytest.raises(openai.APIError, match="cancelled by the client"):
        list(stream)


def test_a_provider_failure_fails_the_run_with_a_message_not_a_traceback(
    service: Service, model_server: OfflineModelServer
) -> None:
    model_server.add_fault(Fault(status=400, times=1, model="root-main"))
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(service, "globex").chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "What is the code?"}]
        )
    assert raised.value.status_code == 502
    body = raised.value.response.json()
    assert body["error"]["code"] == "run_failed"
    assert "Traceback" not in body["error"]["message"]
    assert "provider-secret-key" not in raised.value.response.text
    with service.client("globex") as client:
        run = client.get(f"/v1/runs/{body['rlm']['run_id']}").json()
    assert run["status"] == "failed" and run["error"] == body["error"]["message"]


def test_a_client_that_leaves_cancels_its_chat_run(
    service: Service, model_server: OfflineModelServer
) -> None:
    body = {"model": "slow", "messages": [{"role": "user", "content": "Wait."}]}
    with service.client() as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=body, timeout=1.0)
        run = client.get("/v1/runs").json()["data"][0]
        assert run["profile"] == "slow"
        run = wait_status(client, run["id"], {"cancelled", "succeeded", "failed"})
        assert (run["status"], run["error"]) == ("cancelled", "the client disconnected")


def test_a_stream_keeps_the_connection_alive_and_ends_with_done(service: Service) -> None:
    body = {
        "model": "pause",
        "stream": True,
        "messages": [{"role": "user", "content": "Wait a moment."}],
    }
    with service.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        messages = sse_events(r.iter_lines())
    assert any(m.get(":") == "keep-alive" for m in messages)
    data = [m["data"] for m in messages if "data" in m]
    assert data[-1] == "[DONE]"
    assert "after the pause" in "".join(data)


def test_models_lists_the_tenants_profiles(service: Service) -> None:
    assert [m.id for m in sdk(service).models.list()] == ["rlm", "slow", "pause", "limited"]
    assert [m.id for m in sdk(service, "globex").models.list()] == ["rlm"]


def test_auth_missing_wrong_and_a_profile_not_allowed(service: Service) -> None:
    with service.client(tenant=None) as client:
        for method, path in [("GET", "/v1/models"), ("POST", "/v1/runs"), ("GET", "/v1/usage")]:
            r = client.request(method, path)
            assert r.status_code == 401, path
            assert r.json()["error"]["type"] == "authentication_error"
        r = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(service, token="wrong").chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.PermissionDeniedError):
        sdk(service, "globex").chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "hi"}]
        )
    with service.client("globex") as client:
        r = client.post("/v1/runs", json={"profile": "nonexistent", "query": "q"})
        assert r.status_code == 403


def test_another_tenants_run_is_not_found(service: Service) -> None:
    with service.client() as acme, service.client("globex") as globex:
        run_id = acme.post(
            "/v1/runs", json={"profile": "rlm", "query": "What is the code?"}
        ).json()["id"]
        for method, path in [
            ("GET", f"/v1/runs/{run_id}"),
            ("DELETE", f"/v1/runs/{run_id}"),
            ("GET", f"/v1/runs/{run_id}/events"),
        ]:
            r = globex.request(method, path)
            assert r.status_code == 404, (method, path)
            assert r.json()["error"]["code"] == "run_not_found"
        assert run_id not in [run["id"] for run in globex.get("/v1/runs").json()["data"]]
        assert wait_status(acme, run_id, {"succeeded"})["status"] == "succeeded"


def test_runs_json_and_multipart_and_idempotency(service: Service) -> None:
    with service.client() as client:
        body = {"profile": "rlm", "query": "What is the code?", "context": CONTEXT}
        first = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 202
        again = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "k-1"})
        assert again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        other = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "k-2"})
        assert other.json()["id"] != first.json()["id"]
        run = wait_status(client, first.json()["id"], {"succeeded", "failed"})
        assert (run["status"], run["answer"], run["error"]) == ("succeeded", "42", None)
        assert run["usage"]["total_tokens"] > 0
        upload = client.post(
            "/v1/runs",
            data={"profile": "rlm", "query": "What is the password?"},
            files={"context": ("notes.txt", b"a\nthe password is swordfish\nb", "text/plain")},
        )
        assert upload.status_code == 202, upload.text
        run = wait_status(client, upload.json()["id"], {"succeeded", "failed"})
        assert (run["status"], run["answer"]) == ("succeeded", "swordfish")


def test_run_events_stream_from_the_start_then_live(service: Service) -> None:
    with service.client() as client:
        run_id = client.post("/v1/runs", json={"profile": "pause", "query": "Wait."}).json()["id"]
        with client.stream("GET", f"/v1/runs/{run_id}/events") as r:
            assert r.status_code == 200
            messages = [m for m in sse_events(r.iter_lines()) if "data" in m]
        # The stream ended by itself: the run has ended.
        assert client.get(f"/v1/runs/{run_id}").json()["status"] == "succeeded"
        names = [m["event"] for m in messages]
        assert names[0] == "run_start" and "final" in names and names[-1] == "usage"
        ids = [int(m["id"]) for m in messages if "id" in m]
        assert ids == list(range(1, len(ids) + 1))
        # Read again after the end, from the store, resuming after event 3.
        with client.stream("GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "3"}) as r:
            rest = [m for m in sse_events(r.iter_lines()) if "data" in m]
        assert [int(m["id"]) for m in rest] == ids[3:]


def test_cancel_stops_the_run_and_its_sub_calls_at_once(
    service: Service, model_server: OfflineModelServer
) -> None:
    with service.client() as client:
        before = slow_calls(model_server)
        run_id = client.post("/v1/runs", json={"profile": "slow", "query": "Wait."}).json()["id"]
        wait_for_the_slow_sub_call(model_server, before)
        disconnects = model_server.stats.disconnects
        started = time.monotonic()
        r = client.delete(f"/v1/runs/{run_id}")
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 5
        assert r.json()["status"] == "cancelled"
        run = client.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "cancelled" and run["error"] == "cancelled by the client"
        assert client.delete(f"/v1/runs/{run_id}").status_code == 409
        deadline = time.monotonic() + 5
        while model_server.stats.disconnects == disconnects and time.monotonic() < deadline:
            time.sleep(0.02)
        assert model_server.stats.disconnects > disconnects  # the sub-call was dropped


def test_concurrent_runs_over_the_quota_are_429(service: Service) -> None:
    with service.client("tiny") as client:
        first = client.post("/v1/runs", json={"profile": "slow", "query": "Wait."})
        assert first.status_code == 202
        second = client.post("/v1/runs", json={"profile": "slow", "query": "Wait."})
        assert second.status_code == 429
        assert int(second.headers["Retry-After"]) >= 1
        assert second.json()["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            sdk(service, "tiny").chat.completions.create(
                model="rlm", messages=[{"role": "user", "content": "hi"}]
            )
        assert client.delete(f"/v1/runs/{first.json()['id']}").status_code == 200
        third = client.post("/v1/runs", json={"profile": "rlm", "query": "What is the code?"})
        assert third.status_code == 202
        assert wait_status(client, third.json()["id"], {"succeeded"})["status"] == "succeeded"


def test_runs_per_minute_and_tokens_per_day_are_429_with_retry_after(service: Service) -> None:
    query = {"profile": "rlm", "query": "What is the code?", "context": CONTEXT}
    with service.client("burst") as client:
        assert client.post("/v1/runs", json=query).status_code == 202
        r = client.post("/v1/runs", json=query)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        assert "minute" in r.json()["error"]["message"]
    with service.client("frugal") as client:
        first = client.post("/v1/runs", json=query)
        assert first.status_code == 202
        assert wait_status(client, first.json()["id"], {"succeeded"})["status"] == "succeeded"
        r = client.post("/v1/runs", json=query)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) <= 86_400
        assert "token" in r.json()["error"]["message"]


def test_malformed_and_oversized_requests(service: Service) -> None:
    with service.client("globex") as client:
        before = len(client.get("/v1/runs").json()["data"])
        cases = [
            (b"{not json", 400),
            (b"[1, 2]", 400),
            (b'{"model": "rlm"}', 400),
            (b'{"model": "rlm", "messages": [{"role": "system", "content": "x"}]}', 400),
            (
                b'{"model": "rlm", "messages": [{"role": "user", "content": "q"}], '
                b'"rlm": {"context": 5}}',
                400,
            ),
            (b'{"model": "rlm", "messages": "hi"}', 400),
        ]
        for body, status in cases:
            r = client.post(
                "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert error["message"] and error["type"] and error["code"]
        assert client.post("/v1/runs", json={"profile": "rlm"}).status_code == 400
        # Over [server] max_body_bytes (200 kB): refused while reading.
        big = {"profile": "rlm", "query": "q", "context": "x" * 300_000}
        r = client.post("/v1/runs", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = client.post(
            "/v1/runs",
            data={"profile": "rlm", "query": "q"},
            files={"context": ("big.txt", b"x" * 300_000, "text/plain")},
        )
        assert r.status_code == 413
        assert len(client.get("/v1/runs").json()["data"]) == before  # nothing stored
        assert client.get("/v1/nowhere").json()["error"]["code"] == "not_found"
    with service.client() as client:
        # Under the body limit, over acme's max_context_bytes (100 kB).
        r = client.post("/v1/runs", json={"profile": "rlm", "query": "q", "context": "y" * 150_000})
        assert r.status_code in (403, 413), r.text
        assert "context" in r.json()["error"]["message"]


def test_usage_health_metrics_and_openapi(service: Service) -> None:
    with service.client("globex") as client:
        client.post(
            "/v1/chat/completions",
            json={"model": "rlm", "messages": [{"role": "user", "content": "What is the code?"}]},
        )
        usage = client.get("/v1/usage").json()
        assert usage["tenant"] == "globex" and usage["tokens_today"] > 0
        assert usage["quotas"]["concurrent_runs"]["limit"] == 4
    with httpx.Client(base_url=service.url) as anonymous:
        assert anonymous.get("/healthz").json()["status"] == "ok"
        assert anonymous.get("/metrics").status_code == 401
        assert anonymous.get("/metrics", headers={"Authorization": "Bearer x"}).status_code == 401
        operator = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        metrics = anonymous.get("/metrics", headers=operator).text
        assert 'rlm_runs{status="succeeded"}' in metrics
        assert "rlm_run_seconds_bucket" in metrics and "rlm_live_sandboxes" in metrics
        paths = anonymous.get("/openapi.json").json()["paths"]
        assert "/v1/chat/completions" in paths and "/v1/runs/{run_id}/events" in paths


def test_secrets_stay_out_of_responses_and_the_database(service: Service) -> None:
    with service.client() as client:
        runs = client.get("/v1/runs").text
    assert "provider-secret-key" not in runs and TOKENS["acme"] not in runs
    database = b"".join(p.read_bytes() for p in service.folder.glob("rlm.db*"))
    assert database
    log = service.log.read_bytes()
    for secret in ("provider-secret-key", *TOKENS.values()):
        assert secret.encode() not in database
        assert secret.encode() not in log
