"""`rlm serve` on PostgreSQL: two replicas share one database; a run one of them
owns is read, and followed live, from the other."""

from __future__ import annotations

import time
from pathlib import Path

import openai

from rlm.testing import OfflineModelServer
from tests.service.api_support import (
    SCRIPTS,
    TOKENS,
    Service,
    slow_calls,
    sse_events,
    wait_for_the_slow_sub_call,
    wait_status,
)


def test_two_replicas_share_runs_through_postgresql(postgres_url: str, tmp_path: Path) -> None:
    with OfflineModelServer(scripts=SCRIPTS) as model_server:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = Service(tmp_path / "a", model_server, postgres_url).start()
        second = Service(tmp_path / "b", model_server, postgres_url).start()
        try:
            reply = openai.OpenAI(
                base_url=f"{first.url}/v1", api_key=TOKENS["acme"], max_retries=0
            ).chat.completions.create(
                model="rlm",
                messages=[{"role": "user", "content": "What is the code?"}],
                extra_body={"rlm": {"context": "x\nthe code is 42\ny"}},
            )
            assert reply.choices[0].message.content == "42"
            with first.client() as a, second.client() as b:
                run_id = (reply.model_extra or {})["rlm"]["run_id"]
                assert b.get(f"/v1/runs/{run_id}").json()["answer"] == "42"
                # A run in flight on the first replica, followed from the second.
                live = a.post("/v1/runs", json={"profile": "pause", "query": "Wait."}).json()["id"]
                with b.stream("GET", f"/v1/runs/{live}/events") as r:
                    names = [m["event"] for m in sse_events(r.iter_lines()) if "event" in m]
                assert names[0] == "run_start" and names[-1] == "usage"
                assert wait_status(b, live, {"succeeded"})["status"] == "succeeded"
                assert b.get("/v1/usage").json()["tokens_today"] > 0
                with second.client("globex") as other:
                    assert other.get(f"/v1/runs/{live}").status_code == 404
                # Cancelled through the replica that does not run it: the owner stops it.
                before = slow_calls(model_server)
                slow = a.post("/v1/runs", json={"profile": "slow", "query": "Wait."}).json()["id"]
                wait_for_the_slow_sub_call(model_server, before)
                disconnects = model_server.stats.disconnects
                r = b.delete(f"/v1/runs/{slow}")
                assert r.status_code == 200 and r.json()["status"] == "cancelled"
                deadline = time.monotonic() + 10
                while model_server.stats.disconnects == disconnects:
                    assert time.monotonic() < deadline, "the owner did not stop the run"
                    time.sleep(0.05)
                run = a.get(f"/v1/runs/{slow}").json()
                assert (run["status"], run["error"]) == ("cancelled", "cancelled by the client")
        finally:
            assert first.stop() == 0
            assert second.stop() == 0


def test_quotas_hold_across_replicas(postgres_url: str, tmp_path: Path) -> None:
    with OfflineModelServer(scripts=SCRIPTS) as model_server:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = Service(tmp_path / "a", model_server, postgres_url).start()
        second = Service(tmp_path / "b", model_server, postgres_url).start()
        try:
            # "tiny" may run one at a time: its run on the first replica fills it.
            with first.client("tiny") as a, second.client("tiny") as b:
                before = slow_calls(model_server)
                slow = a.post("/v1/runs", json={"profile": "slow", "query": "Wait."})
                wait_for_the_slow_sub_call(model_server, before)
                refused = b.post("/v1/runs", json={"profile": "slow", "query": "Again."})
                assert refused.status_code == 429, refused.text
                assert "runs in flight" in refused.json()["error"]["message"]
                assert refused.headers["retry-after"]
                assert b.delete(f"/v1/runs/{slow.json()['id']}").status_code == 200
                wait_status(a, slow.json()["id"], {"cancelled"})
                again = b.post("/v1/runs", json={"profile": "rlm", "query": "q"})
                assert again.status_code == 202, again.text
            # "burst" may start one run a minute, wherever it starts it.
            with first.client("burst") as a, second.client("burst") as b:
                assert a.post("/v1/runs", json={"profile": "rlm", "query": "q"}).status_code == 202
                refused = b.post("/v1/runs", json={"profile": "rlm", "query": "q"})
                assert refused.status_code == 429, refused.text
                assert "in the last minute" in refused.json()["error"]["message"]
                assert 0 < int(refused.headers["retry-after"]) <= 60
        finally:
            assert first.stop() == 0
            assert second.stop() == 0
