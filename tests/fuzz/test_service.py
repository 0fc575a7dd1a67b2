"""Fuzzing the service's request bodies (rlm/service/: http.py, openai_api.py, app.py,
runs.py): the Starlette app in-process (``TestClient``, its lifespan run), the
restricted backend (``allow_unsafe_restricted``), a SQLite store, the offline model
server as the provider.

The tenant may use every profile but has a token budget of 0 a day, so a request that
passes every check of its body is refused at the last step, the quota (429), and no
run starts: what is fuzzed is the validation, at the rate of hundreds of requests.

Properties: any body, header and path gives a clean 2xx or 4xx, never a 5xx, a crash
or a hang; every 4xx is an error in OpenAI's shape (``{"error": {"message", "type",
"code"}}``) with a message; nothing the tenant sends starts a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from rlm.config import RLMConfig
from rlm.service.app import build_app
from rlm.service.config import load_config
from rlm.testing import OfflineModelServer
from tests.fuzz.support import any_text, examples, hard_timeout, json_values, nested

TOKEN = "fuzz-tenant-token"
PROFILES = ("rlm", "other")
LIMIT = 50_000


def _config(folder: Path) -> Path:
    sha = hashlib.sha256(TOKEN.encode()).hexdigest()
    path = folder / "service.toml"
    path.write_text(
        f"""
[server]
database = "{folder / "rlm.db"}"
allow_unsafe_restricted = true
max_body_bytes = {LIMIT}
pool_size = 0

[profiles.rlm]
model = "root-main"
sub_model = "sub-main"
backend = "restricted"

[profiles.other]
model = "root-main"
sub_model = "sub-main"
backend = "restricted"

[[tenants]]
name = "fuzz"
token_sha256 = "{sha}"
profiles = ["rlm"]
tokens_per_day = 0
max_context_bytes = 20000
"""
    )
    return path


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with OfflineModelServer() as server:
        config = load_config(_config(tmp_path_factory.mktemp("service")))
        base = RLMConfig(api_key="provider-key", base_url=server.base_url)
        app = build_app(config, base=base)
        with TestClient(app, raise_server_exceptions=False) as test_client:
            yield test_client


def check(response: Any) -> None:
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    if status >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and isinstance(error["code"], str)


def no_runs(client: TestClient) -> None:
    listed = client.get("/v1/runs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert listed.status_code == 200
    assert listed.json()["data"] == []


_auth = st.one_of(
    st.just({"Authorization": f"Bearer {TOKEN}"}),
    st.just({}),
    st.sampled_from(
        [
            {"Authorization": "Bearer "},
            {"Authorization": f"bearer {TOKEN}"},
            {"Authorization": TOKEN},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": "Basic Zm9vOmJhcg=="},
        ]
    ),
)
_headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            [
                "application/json",
                "text/plain",
                "multipart/form-data",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
            ]
        ),
        "Idempotency-Key": st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300
        ),
    },
)

_messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant", "tool"])},
            optional={
                "content": st.one_of(
                    any_text,
                    st.lists(
                        st.one_of(
                            st.fixed_dictionaries(
                                {
                                    "type": st.sampled_from(["text", "image_url"]),
                                    "text": st.one_of(any_text, json_values),
                                }
                            ),
                            json_values,
                        ),
                        max_size=3,
                    ),
                    json_values,
                )
            },
        ),
        json_values,
    ),
    max_size=4,
)
_contexts = st.one_of(
    json_values,
    st.sampled_from(["", "x" * 30_000]),
    st.integers(1, 3000).map(lambda d: json.loads(nested(min(d, 800)))),
)
_chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from([*PROFILES, "", "gpt-4"]), json_values),
        "messages": st.one_of(_messages, json_values),
        "rlm": st.one_of(st.fixed_dictionaries({}, optional={"context": _contexts}), json_values),
        "stream": st.one_of(st.booleans(), json_values),
        "stream_options": st.one_of(
            st.fixed_dictionaries({}, optional={"include_usage": json_values}), json_values
        ),
        "temperature": json_values,
    },
)
_run_bodies = st.fixed_dictionaries(
    {},
    optional={
        "profile": st.one_of(st.sampled_from([*PROFILES, ""]), json_values),
        "query": st.one_of(any_text, st.just("   "), json_values),
        "context": _contexts,
        "tenant": st.just("someone-else"),
        "max_tokens": json_values,
    },
)


def _encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


_raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b'{"model": NaN}',
            b'{"model": "rlm", "messages": [{"role": "user", "content": "hi"}], '
            b'"rlm": {"context": [Infinity]}}',
            b'{"profile": "rlm", "query": "q", "context": [1e999]}',
            b'{"profile": "rlm", "query": "q", "context": [' + b"1" * 5000 + b"]}",
            b"\xff\xfe{}",
            b'{"model": "\xed\xa0\x80"}',
        ]
    ),
    st.integers(1, LIMIT // 2 - 50).map(lambda d: nested(d).encode()),
    st.integers(1, LIMIT // 7).map(lambda d: ('{"a":' * d + "1" + "}" * d).encode()),
    st.integers(1, 10).map(lambda k: b'{"query": "' + b"x" * (k * LIMIT // 5) + b'"}'),
)


@given(
    st.sampled_from(["/v1/chat/completions", "/v1/runs"]),
    st.one_of(_chat_bodies.map(_encode), _run_bodies.map(_encode), _raw_bodies),
    _auth,
    _headers,
)
@settings(max_examples=examples(200))
def test_any_body_gets_a_clean_answer_and_starts_no_run(
    client: TestClient, path: str, body: bytes, auth: dict[str, str], headers: dict[str, str]
) -> None:
    with hard_timeout(20):
        response = client.post(path, content=body, headers={**headers, **auth})
    check(response)
    assert response.status_code not in (200, 202), response.text[:300]
    no_runs(client)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            # Form fields are UTF-8 on the wire: no lone surrogates here.
            "profile": st.one_of(st.sampled_from(PROFILES), st.text(max_size=40)),
            "query": st.one_of(st.text(max_size=40), st.just("q")),
            "max_tokens": st.text(max_size=40),
        },
    ),
    st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from(["context.json", "context.txt", "c", "../../etc/passwd"]),
            st.one_of(
                st.binary(max_size=200),
                _contexts.map(_encode),
                st.integers(1, 20_000).map(lambda d: nested(d).encode()),
            ),
            st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
        ),
    ),
)
@settings(max_examples=examples(100))
def test_any_multipart_run_gets_a_clean_answer_and_starts_no_run(
    client: TestClient, fields: dict[str, str], upload: tuple[str, bytes, str] | None
) -> None:
    files = {"context": upload} if upload is not None else None
    with hard_timeout(20):
        response = client.post(
            "/v1/runs", data=fields, files=files, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    check(response)
    assert response.status_code != 202
    no_runs(client)


@given(
    st.sampled_from(["GET", "DELETE"]),
    st.one_of(
        any_text.filter(bool), st.sampled_from(["run_1", "' OR 1=1 --", "%00", "..", "a" * 500])
    ),
    st.sampled_from(["", "/events"]),
    st.one_of(
        st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
    ),
    _auth,
)
@settings(max_examples=examples(120))
def test_any_run_path_gets_a_clean_answer(
    client: TestClient, method: str, run_id: str, tail: str, last: str | None, auth: dict[str, str]
) -> None:
    headers = dict(auth)
    if last is not None:
        headers["Last-Event-ID"] = last
    quoted = "".join(c if c.isalnum() else f"%{ord(c) & 0xFF:02X}" for c in run_id)
    with hard_timeout(20):
        response = client.request(method, f"/v1/runs/{quoted}{tail}", headers=headers)
    check(response)
    assert response.status_code in (401, 404, 405), response.text[:300]


def test_a_body_nested_past_the_decoders_depth_is_a_400(client: TestClient) -> None:
    """Found by the fuzzer: a JSON body nested deeper than json.loads recurses (a few
    kB of "[") raised RecursionError out of read_json and the server answered 500."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/v1/chat/completions", "/v1/runs"):
        response = client.post(path, content=nested(20_000).encode(), headers=auth)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_json"


def test_a_context_file_nested_past_the_decoders_depth_is_a_400(client: TestClient) -> None:
    """Found with the fuzzer: the same for a multipart run's JSON context file."""
    response = client.post(
        "/v1/runs",
        data={"profile": "rlm", "query": "q"},
        files={"context": ("context.json", nested(20_000).encode(), "application/json")},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_context"
