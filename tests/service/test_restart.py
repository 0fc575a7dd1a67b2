"""A server stopped or killed with runs in flight: they end `interrupted`, with the
reason, and stay readable (status and events) from the server started after it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from rlm.testing import OfflineModelServer
from tests.service.api_support import (
    SCRIPTS,
    Service,
    slow_calls,
    sse_events,
    wait_for_the_slow_sub_call,
    wait_status,
)


def start_slow_run(service: Service, model_server: OfflineModelServer) -> str:
    before = slow_calls(model_server)
    with service.client() as client:
        run_id: str = client.post("/v1/runs", json={"profile": "slow", "query": "Wait."}).json()[
            "id"
        ]
        assert wait_status(client, run_id, {"running"})["status"] == "running"
    wait_for_the_slow_sub_call(model_server, before)
    return run_id


def read_back(service: Service, run_id: str) -> tuple[dict[str, object], list[str]]:
    with service.client() as client:
        run = client.get(f"/v1/runs/{run_id}").json()
        with client.stream("GET", f"/v1/runs/{run_id}/events") as r:
            names = [m["event"] for m in sse_events(r.iter_lines()) if "event" in m]
    return run, names


def test_stopped_and_killed_servers_leave_their_runs_interrupted(tmp_path: Path) -> None:
    with OfflineModelServer(scripts=SCRIPTS) as model_server:
        service = Service(tmp_path, model_server, str(tmp_path / "rlm.db")).start()
        stopped = start_slow_run(service, model_server)
        begun = time.monotonic()
        # SIGTERM: the run is interrupted by the server itself, which then exits cleanly.
        assert service.stop(signal.SIGTERM) == 0
        assert time.monotonic() - begun < 10
        service.start()
        run, names = read_back(service, stopped)
        assert run["status"] == "interrupted"
        assert run["error"] == "the server stopped while this run was in flight"
        assert names[0] == "run_start" and "cell" in names

        # SIGKILL: nothing runs at the end; the next start marks the run.
        killed = start_slow_run(service, model_server)
        time.sleep(0.3)  # events are written in batches at most 0.1 s old
        assert service.stop(signal.SIGKILL) == -signal.SIGKILL
        service.start()
        run, names = read_back(service, killed)
        assert run["status"] == "interrupted"
        assert run["error"] == "the server restarted while this run was in flight"
        assert names and names[0] == "run_start"
        # Finished runs are as they were.
        assert read_back(service, stopped)[0]["status"] == "interrupted"
        assert service.stop() == 0


def test_a_replica_dead_on_another_host_has_its_runs_interrupted_by_another(
    database_url: str, tmp_path: Path
) -> None:
    # Replica "a" claims another host's name, so no pid check on this machine can
    # see it die: only its missing heartbeats tell replica "b" it is gone.
    with OfflineModelServer(scripts=SCRIPTS) as model_server:
        replicas = []
        for name, replica_id in (("a", "elsewhere.example:41"), ("b", "here.example:42")):
            (tmp_path / name).mkdir()
            service = Service(tmp_path / name, model_server, database_url)
            server = f'[server]\nreplica_id = "{replica_id}"\nreplica_timeout_s = 1.5\n'
            service.config.write_text(service.config.read_text().replace("[server]\n", server))
            replicas.append(service.start())
        doomed, survivor = replicas
        try:
            run_id = start_slow_run(doomed, model_server)
            doomed.stop(signal.SIGKILL)
            with survivor.client() as client:
                run = wait_status(client, run_id, {"interrupted"}, timeout=20)
                assert run["error"] == (
                    "its replica elsewhere.example:41 stopped answering for over 1.5 s"
                )
                # The survivor's own runs are untouched by its reaping.
                answer = client.post("/v1/runs", json={"profile": "rlm", "query": "q"})
                mine = answer.json()["id"]
                assert wait_status(client, mine, {"succeeded", "failed"})["status"] == "succeeded"
        finally:
            assert survivor.stop() == 0
