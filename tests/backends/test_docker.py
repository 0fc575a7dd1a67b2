# ruff: noqa: E501 -- PROBE is a script run inside the sandbox, kept readable as is
"""The Docker backend against a real engine, under runc and under gVisor (runsc).

Read-only isolation facts are gathered once per runtime in one container (the
``facts`` fixture); tests that break or kill a container get one of their own.
Network checks only ever target 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from rlm.backends.docker import (
    LABEL,
    OWNER_LABEL,
    ColdStart,
    ContainerPool,
    ContainerSpec,
    DockerSandbox,
    cleanup_leftovers,
    doctor_checks,
    launch,
    unavailable_reason,
)
from rlm.backends.docker.container import seccomp_profile
from rlm.config import RLMConfig
from rlm.errors import ProtocolError, VariableNotFound
from rlm.session import SessionLimits
from tests.support import IMAGE, RUNTIMES, FakeBatcher, make_bridge

pytestmark = pytest.mark.docker

# Runs inside the sandbox; prints one JSON object of what it could see and do.
PROBE = r"""
import errno, json, os, socket, subprocess
canaries = [c for c in CANARIES if c]
facts = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups()}
facts["netdev"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
facts["routes"] = open("/proc/net/route").read().splitlines()[1:]
try:
    routes6 = open("/proc/net/ipv6_route").read().splitlines()
except OSError:
    routes6 = []
facts["routes6_not_lo"] = [r for r in routes6 if not r.rstrip().endswith(" lo")]
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
facts["status"] = {k: status[k].strip() for k in status if k.startswith("Cap") or k in ("NoNewPrivs", "Seccomp")}
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
facts["write_root"] = {p: attempt(lambda p=p: open(p, "w").close()) for p in ("/opt/rlm/x", "/etc/x", "/x", "/usr/x")}
facts["mounts"] = {l.split()[1]: l.split()[3].split(",") for l in open("/proc/mounts") if l.split()[1] in ("/", "/tmp")}
def fill():
    with open("/tmp/fill", "wb") as f:
        for _ in range(200):
            f.write(b"\0" * (1 << 20))
            f.flush()
facts["tmpfs_fill"] = attempt(fill)
facts["tmpfs_filled_mb"] = os.path.getsize("/tmp/fill") >> 20
os.remove("/tmp/fill")
with open("/bin/true", "rb") as src, open("/tmp/exe", "wb") as dst:
    dst.write(src.read())
os.chmod("/tmp/exe", 0o755)
facts["exec_tmp"] = attempt(lambda: subprocess.run(["/tmp/exe"]))
def connect():
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", HOST_PORT))
    finally:
        s.close()
facts["connect_host_port"] = attempt(connect)
facts["env_keys"] = sorted(os.environ)
hits = []
if any(c in repr(dict(os.environ)) for c in canaries):
    hits.append("os.environ")
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for name in ("environ", "cmdline"):
        try:
            data = open(f"/proc/{pid}/{name}", "rb").read()
        except OSError:
            continue
        if any(c.encode() in data for c in canaries):
            hits.append(f"/proc/{pid}/{name}")
scanned = 0
for top in ("/bin", "/etc", "/home", "/lib", "/opt", "/root", "/run", "/sbin", "/srv", "/tmp", "/usr", "/var"):
    for root, dirs, files in os.walk(top):
        for f in files:
            path = os.path.join(root, f)
            try:
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                data = open(path, "rb").read()
            except OSError:
                continue
            scanned += 1
            if any(c.encode() in data for c in canaries):
                hits.append(path)
facts["canary_hits"] = hits
facts["files_scanned"] = scanned
facts["hostname"] = socket.gethostname()
print(json.dumps(facts))
"""


@pytest.fixture(scope="module", params=RUNTIMES)
def facts(request: pytest.FixtureRequest, docker_client: Any) -> Iterator[dict[str, Any]]:
    """What model code sees from inside one container, gathered once per runtime."""
    runtime = str(request.param)
    key_canary = "sk-canary-" + secrets.token_hex(12)
    env_canary = "host-env-canary-" + secrets.token_hex(12)
    saved = {k: os.environ.get(k) for k in ("OPENAI_API_KEY", "RLM_TEST_HOST_CANARY")}
    os.environ["OPENAI_API_KEY"] = key_canary
    os.environ["RLM_TEST_HOST_CANARY"] = env_canary
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[Any] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[1])
            except OSError:
                continue

    watcher = threading.Thread(target=accept, daemon=True)
    watcher.start()

    async def gather() -> dict[str, Any]:
        bridge = make_bridge()
        async with DockerSandbox(
            bridge,
            ColdStart(ContainerSpec(image=IMAGE, runtime=runtime), docker_client=docker_client),
            output_limit=50_000,
        ) as box:
            code = f"CANARIES = {[key_canary, env_canary]!r}\nHOST_PORT = {port}\n" + PROBE
            result = await box.execute(code, 120)
            assert result.error is None, result.error
            found = json.loads(result.stdout)
            found["inspect"] = docker_client.api.inspect_container(box.container_id)
            flood = await box.execute("print('x' * 1_000_000)\nprint('y' * 10, flush=True)", 30)
            found["flood"] = flood.to_dict()
            found["after_flood"] = (await box.execute("print('ok')", 30)).stdout
            found["key_canary"] = key_canary
            found["env_canary"] = env_canary
            found["runtime"] = runtime
            return found

    try:
        yield anyio.run(gather)
    finally:
        stop.set()
        watcher.join()
        listener.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        assert accepted == [], "something in the sandbox reached the host's loopback listener"


def test_container_is_created_hardened(facts: dict[str, Any]) -> None:
    config, host = facts["inspect"]["Config"], facts["inspect"]["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert f"seccomp={seccomp_profile()}" in host["SecurityOpt"]  # rlm's allow-list
    assert host["Privileged"] is False
    assert host["PidsLimit"] == 128
    assert host["Memory"] == 2 * 1024**3
    assert host["MemorySwap"] == host["Memory"]  # no swap on top
    assert host["NanoCpus"] == 10**9
    assert host["Runtime"] == facts["runtime"]
    assert host["LogConfig"]["Type"] == "none"
    assert "size=64m" in host["Tmpfs"]["/tmp"]
    assert not host.get("Binds") and not facts["inspect"]["Mounts"]
    assert config["User"] == "10001:10001"
    # Tied to the host: stdin closes when it detaches, and a stopped container goes.
    assert config["OpenStdin"] is True and config["StdinOnce"] is True
    assert host["AutoRemove"] is True
    assert config["Labels"][LABEL] == "1"
    assert config["Labels"][OWNER_LABEL].endswith(f":{os.getpid()}")
    assert not any(facts["key_canary"] in e or facts["env_canary"] in e for e in config["Env"])


def test_only_loopback_and_no_route(facts: dict[str, Any]) -> None:
    assert facts["netdev"] == ["lo"]
    assert facts["routes"] == []
    assert facts["routes6_not_lo"] == []


def test_cannot_reach_a_listener_on_the_hosts_loopback(facts: dict[str, Any]) -> None:
    # The sandbox's 127.0.0.1 is its own; the host's listener (checked in the fixture
    # teardown) sees no connection.
    assert facts["connect_host_port"] in ("ECONNREFUSED", "ENETUNREACH", "ETIMEDOUT")


def test_runs_as_a_non_root_user(facts: dict[str, Any]) -> None:
    assert facts["uid"] == facts["euid"] == 10001
    assert facts["gid"] == 10001
    assert 0 not in facts["groups"]


def test_root_filesystem_is_read_only(facts: dict[str, Any]) -> None:
    assert "ro" in facts["mounts"]["/"]
    for path, outcome in facts["write_root"].items():
        assert outcome in ("EROFS", "EACCES"), (path, outcome)


def test_no_capabilities_and_no_privilege_gain(facts: dict[str, Any]) -> None:
    status = facts["status"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    if facts["runtime"] == "runc":
        # gVisor does not report these; runc's kernel does.
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"


def test_scratch_tmpfs_is_capped_and_not_executable(facts: dict[str, Any]) -> None:
    assert facts["tmpfs_fill"] == "ENOSPC"
    assert 60 <= facts["tmpfs_filled_mb"] <= 64
    assert "noexec" in facts["mounts"]["/tmp"]
    assert facts["exec_tmp"] == "EACCES"


def test_host_environment_and_api_key_absent_everywhere(facts: dict[str, Any]) -> None:
    assert facts["files_scanned"] > 1000  # the scan really walked the filesystem
    assert facts["canary_hits"] == []
    assert "OPENAI_API_KEY" not in facts["env_keys"]
    assert "RLM_TEST_HOST_CANARY" not in facts["env_keys"]
    assert set(facts["env_keys"]) <= {
        "PATH",
        "HOSTNAME",
        "HOME",
        "LC_CTYPE",
        "PYTHONPATH",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
    }
    assert facts["hostname"] == "sandbox"


def test_output_is_capped(facts: dict[str, Any]) -> None:
    flood = facts["flood"]
    assert flood["truncated"] is True
    assert len(flood["stdout"]) < 50_100
    assert "more characters" in flood["stdout"]
    assert facts["after_flood"] == "ok\n"


# -- limits that end in a failure: a container each ----------------------------------


async def test_memory_limit_kills_and_the_session_goes_on(
    runtime: str, sandbox_factory: Any
) -> None:
    box = sandbox_factory(runtime=runtime, memory="192m")
    await box.start()
    await box.load_context("the context")
    await box.execute("kept = 1", 10)
    first = box.container_id
    result = await box.execute("hog = bytearray(400 * 1024 * 1024)\nprint('allocated')", 60)
    assert result.state_lost is True
    assert "out of memory" in result.error
    assert "allocated" not in result.stdout
    after = await box.execute("print(context); print('kept' in dir())", 30)
    assert after.error is None
    assert after.stdout == "the context\nFalse\n"
    assert box.container_id != first


async def test_pids_limit_contains_a_fork_bomb(runtime: str, sandbox_factory: Any) -> None:
    box = sandbox_factory(runtime=runtime, pids=48)
    await box.start()
    code = (
        "import os, time\n"
        "kids, err = [], None\n"
        "try:\n"
        "    for _ in range(300):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(1); os._exit(0)\n"
        "        kids.append(pid)\n"
        "except OSError as e:\n"
        "    err = type(e).__name__\n"
        "print(len(kids), err)\n"
        "for k in kids: os.waitpid(k, 0)\n"
    )
    result = await box.execute(code, 60)
    if runtime == "runc":
        # The kernel refuses the 48th task; the runner itself lives on.
        forked, err = result.stdout.split()
        assert int(forked) < 48
        assert err == "BlockingIOError"
        assert result.state_lost is False
    else:
        # gVisor's own host threads share the limit: the sandbox dies, and says so.
        assert result.state_lost is True, result
        assert "died" in result.error and "pids (48)" in result.error
    assert (await box.execute("print('alive')", 30)).stdout == "alive\n"


async def test_cpu_limit_throttles(runtime: str, sandbox_factory: Any, docker_client: Any) -> None:
    box = sandbox_factory(runtime=runtime, cpus=0.5)
    await box.start()
    code = (
        "import os, time\n"
        "for _ in range(2):\n"
        "    if os.fork() == 0:\n"
        "        end = time.time() + 4\n"
        "        while time.time() < end: pass\n"
        "        os._exit(0)\n"
    )
    assert (await box.execute(code, 10)).error is None
    await anyio.sleep(0.5)

    def usage() -> tuple[float, int]:
        stats = docker_client.api.stats(box.container_id, stream=False)
        cpu = stats["cpu_stats"]
        return cpu["cpu_usage"]["total_usage"] / 1e9, cpu["throttling_data"]["throttled_periods"]

    used0, throttled0 = await anyio.to_thread.run_sync(usage)
    t0 = time.monotonic()
    await anyio.sleep(2)
    used1, throttled1 = await anyio.to_thread.run_sync(usage)
    rate = (used1 - used0) / (time.monotonic() - t0)
    # Two busy processes would use ~2 CPUs unthrottled on this 2-core machine.
    assert rate < 0.5 * 1.4, rate
    assert throttled1 > throttled0


# -- timeouts, deaths, restarts --------------------------------------------------------


async def test_timeout_interrupts_the_cell_and_keeps_state(
    runtime: str, sandbox_factory: Any
) -> None:
    box = sandbox_factory(runtime=runtime)
    await box.start()
    await box.execute("state = 'kept'", 10)
    result = await box.execute("import time\nprint('before')\ntime.sleep(60)", 1.0)
    assert result.timed_out is True
    assert result.state_lost is False
    assert "interrupted" in result.error and "variables are kept" in result.error
    assert result.stdout == "before\n"
    assert (await box.execute("print(state)", 10)).stdout == "kept\n"
    assert box.containers_started == 1


async def test_a_cell_that_ignores_interrupts_is_restarted(
    runtime: str, sandbox_factory: Any
) -> None:
    box = sandbox_factory(runtime=runtime, interrupt_grace=1.0)
    await box.start()
    await box.load_context(["a", "b"])
    await box.execute("state = 1", 10)
    code = "import time\nwhile True:\n    try:\n        time.sleep(5)\n    except KeyboardInterrupt:\n        pass"
    result = await box.execute(code, 1.0)
    assert result.timed_out is True
    assert result.state_lost is True
    assert "variable" in result.error and "lost" in result.error
    after = await box.execute("print(context, 'state' in dir())", 10)
    assert after.stdout == "['a', 'b'] False\n"
    assert box.containers_started == 2


async def test_a_container_killed_from_outside_is_reported_and_replaced(
    runtime: str, sandbox_factory: Any, docker_client: Any
) -> None:
    box = sandbox_factory(runtime=runtime)
    await box.start()
    await box.load_context("ctx")

    async def kill_soon(container_id: str) -> None:
        await anyio.sleep(0.5)
        await anyio.to_thread.run_sync(docker_client.api.kill, container_id)

    # Mid-cell.
    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_soon, box.container_id)
        result = await box.execute("import time\ntime.sleep(30)", 20)
    assert result.state_lost is True
    assert "killed" in result.error
    assert (await box.execute("print(context)", 10)).stdout == "ctx\n"
    # Between cells.
    await anyio.to_thread.run_sync(docker_client.api.kill, box.container_id)
    await anyio.sleep(0.3)
    result = await box.execute("print(context)", 10)
    assert result.stdout == "ctx\n"
    assert result.state_lost is True
    assert "had died" in result.stderr
    assert box.containers_started == 3


async def test_get_variable(runtime: str, sandbox_factory: Any) -> None:
    box = sandbox_factory(runtime=runtime)
    await box.start()
    await box.execute("answer = 42\ntext = 'é' * 10", 10)
    assert await box.get_variable("answer") == "42"
    assert await box.get_variable("text") == "é" * 10
    with pytest.raises(VariableNotFound):
        await box.get_variable("missing")


async def test_a_100_mb_context_loads(runtime: str, sandbox_factory: Any) -> None:
    box = sandbox_factory(runtime=runtime)
    await box.start()
    context = ("needle in a haystack " * 5_000_000)[:100_000_000]
    await box.load_context(context)
    result = await box.execute("print(len(context), context.count('needle'))", 60)
    assert result.stdout == f"{len(context)} {context.count('needle')}\n"


# -- the protocol under attack -----------------------------------------------------------

FIND_RUNNER = (
    "import gc, os\n"
    "runner = next(o for o in gc.get_objects() if type(o).__name__ == 'Runner')\n"
    "fd = runner._out\n"
)

FORGERIES = {
    "oversized frame": "os.write(fd, b'M7fffffff')",
    "garbage bytes": "os.write(fd, b'this is not a frame at all')",
    "invalid json": "os.write(fd, b'M00000005{oops')",
    "unknown type": "runner.send({'type': 'shell', 'cmd': 'id'})",
    "extra field": "runner.send({'type': 'loaded', 'id': 1, 'tenant': 'other'})",
    "result for another cell": (
        "runner.send({'type': 'result', 'id': 999, 'stdout': '', 'stderr': '', "
        "'error': None, 'truncated': False, 'interrupted': False})"
    ),
    "hello mid-session": "runner.send({'type': 'hello', 'protocol': 1, 'python': 'x'})",
    "reused call id": (
        "for _ in range(2):\n"
        "    runner.send({'type': 'call', 'id': 77, 'method': 'llm_query', "
        "'params': {'prompt': 'hang', 'model': None}})\n"
        "import time; time.sleep(5)"
    ),
}


class SlowBatcher(FakeBatcher):
    async def run(
        self, session: Any, model: str, prompts: list[str], mc: int | None, **kw: Any
    ) -> Any:
        if prompts == ["hang"]:
            await anyio.sleep(30)
        return await super().run(session, model, prompts, mc)


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_forged_and_malformed_frames_end_only_that_session(
    forgery: str, runtime: str, sandbox_factory: Any, docker_client: Any
) -> None:
    victim = sandbox_factory(make_bridge(SlowBatcher()), runtime=runtime)
    bystander = sandbox_factory(runtime=runtime)
    await victim.start()
    await bystander.start()
    await bystander.execute("mine = 'safe'", 10)
    container = victim.container_id
    with pytest.raises(ProtocolError, match="protocol"):
        await victim.execute(FIND_RUNNER + FORGERIES[forgery], 20)
    # The session is over, its container gone; the host and the other session are fine.
    with pytest.raises(ProtocolError):
        await victim.execute("1", 10)
    names = [c["Id"] for c in docker_client.api.containers(all=True)]
    assert container not in names
    assert (await bystander.execute("print(mine)", 10)).stdout == "safe\n"


# -- sub-calls through the bridge ------------------------------------------------------


async def test_llm_query_and_llm_batch_through_the_bridge(
    runtime: str, sandbox_factory: Any
) -> None:
    batcher = FakeBatcher()
    bridge = make_bridge(batcher, limits=SessionLimits(max_batch_size=3))
    box = sandbox_factory(bridge, runtime=runtime)
    await box.start()
    code = (
        "a = llm_query('hello')\n"
        "b = llm_batch(['x', 'fail:rate limited', 'z'], max_concurrent=2)\n"
        "print(a, b[0], b[2], isinstance(b[1], LLMError), b[1].kind)\n"
        "def refused(fn, *args, **kw):\n"
        "    try:\n"
        "        fn(*args, **kw)\n"
        "    except RLMCallError as e:\n"
        "        return str(e)\n"
        "print('1:', refused(llm_batch, ['p'] * 4))\n"
        "print('2:', refused(llm_query, 'q', model='other-model'))\n"
        "print('3:', refused(llm_query, 'boom'))\n"
    )
    result = await box.execute(code, 30)
    assert result.error is None, result.error
    lines = result.stdout.splitlines()
    assert lines[0] == "echo:hello echo:x echo:z True provider"
    assert "over this session's limit of 3" in lines[1]
    assert "not permitted" in lines[2]
    assert lines[3] == "3: the host could not complete this sub-call (internal error)"
    assert "host-secret-path" not in result.stdout
    sessions = {call[0] for call in batcher.calls}
    assert sessions == {bridge.session.session_id}


async def test_a_forged_session_field_in_a_call_is_refused(
    runtime: str, sandbox_factory: Any
) -> None:
    batcher = FakeBatcher()
    bridge = make_bridge(batcher, tenant="tenant-a")
    box = sandbox_factory(bridge, runtime=runtime)
    await box.start()
    code = (
        FIND_RUNNER + "try:\n"
        "    runner._transport('llm_query', {'prompt': 'p', 'model': None, 'tenant': 'tenant-b'})\n"
        "except RLMCallError as e:\n"
        "    print('refused:', e)\n"
        "print(llm_query('ok'))\n"
    )
    result = await box.execute(code, 30)
    assert "refused: malformed request: unexpected fields ['tenant']" in result.stdout
    assert result.stdout.endswith("echo:ok\n")
    assert bridge.session.tenant == "tenant-a"
    assert [c[2] for c in batcher.calls] == [["ok"]]


async def test_sub_calls_over_real_http_to_the_offline_server(
    runtime: str, sandbox_factory: Any, server: Any
) -> None:
    from rlm.provider.client import ModelClient
    from rlm.subcalls.batcher import Batcher

    client = ModelClient(api_key="test-key", base_url=server.base_url, timeout=10)
    try:
        box = sandbox_factory(make_bridge(Batcher(client)), runtime=runtime)
        await box.start()
        code = (
            "chunk = 'intro. The capital is Paris. outro.'\n"
            "q = 'Question: What is the capital?\\n---\\n' + chunk\n"
            "print(llm_query(q))\n"
            "print(llm_batch([q + f' #{i}' for i in range(3)] + ['hello'], max_concurrent=4))\n"
        )
        result = await box.execute(code, 30)
    finally:
        await client.aclose()
    assert result.error is None, result.error
    first, batch = result.stdout.splitlines()
    assert first == "Paris"
    assert batch.count("Paris") == 3
    assert server.stats.completed >= 5  # every distinct prompt went over HTTP


# -- lifecycle: containers always removed ------------------------------------------------


def _ours(docker_client: Any) -> list[str]:
    return [
        c["Id"]
        for c in docker_client.api.containers(all=True, filters={"label": f"{LABEL}=1"})
        if c["Labels"].get(OWNER_LABEL, "").endswith(f":{os.getpid()}")
    ]


async def test_close_and_cancellation_remove_the_container(
    runtime: str, docker_client: Any
) -> None:
    before = set(_ours(docker_client))
    spec = ContainerSpec(image=IMAGE, runtime=runtime)
    box = DockerSandbox(make_bridge(), ColdStart(spec, docker_client=docker_client))
    await box.start()
    first = box.container_id
    await box.execute("x = 41", 10)
    with anyio.move_on_after(1.0):  # a caller giving up (Ctrl-C) mid-cell
        await box.execute("import time\ntime.sleep(60)", 30)
    # The cell stopped on the interrupt: the same container, its variables kept.
    assert (box.container_id, box.resets) == (first, 0)
    assert (await box.execute("print(x + 1)", 10)).stdout == "42\n"
    # A cell that will not stop leaves its container in an unknown state: replaced.
    ignores = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    with anyio.move_on_after(1.0):
        await box.execute(ignores, 30)
    assert first not in _ours(docker_client) and box.resets == 1
    assert (await box.execute("print('new')", 10)).stdout == "new\n"
    await box.close()
    await box.close()
    assert set(_ours(docker_client)) == before


async def test_warm_pool_hands_each_container_to_one_session(
    runtime: str, docker_client: Any
) -> None:
    before = set(_ours(docker_client))
    async with ContainerPool(
        ContainerSpec(image=IMAGE, runtime=runtime), size=2, docker_client=docker_client
    ) as pool:
        await pool.wait_full()
        ids = []
        for _ in range(3):
            box = DockerSandbox(make_bridge(), pool)
            await box.start()
            ids.append(box.container_id)
            await box.execute("x = 1", 10)
            await box.close()
            assert box.container_id is None
        assert len(set(ids)) == 3  # never reused
        await pool.wait_full()
        assert pool.ready == 2
    assert set(_ours(docker_client)) == before


async def test_a_pools_cold_starts_keep_its_message_limit(docker_client: Any) -> None:
    # size 0: every session's container is started cold, and must get the pool's limit.
    async with ContainerPool(
        ContainerSpec(image=IMAGE), size=0, docker_client=docker_client, max_message=100_000
    ) as pool:
        box = DockerSandbox(make_bridge(), pool, output_limit=1_000_000)
        try:
            with pytest.raises(ProtocolError, match="100,000-byte limit"):
                await box.execute("print('x' * 300_000)", 30)
        finally:
            await box.close()
        assert pool.cold_starts == 1


async def test_a_pool_can_be_closed_from_another_task(docker_client: Any) -> None:
    # A service's shutdown handler closes the pool while its owner still holds it.
    before = set(_ours(docker_client))
    spec = ContainerSpec(image=IMAGE)
    for full in (True, False):  # full, and with starts still in flight
        async with ContainerPool(spec, size=2, docker_client=docker_client) as pool:
            if full:
                await pool.wait_full()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(pool.close)
            assert pool.ready == 0
            assert set(_ours(docker_client)) == before
            with pytest.raises(RuntimeError, match="async with"):
                await pool.acquire()
        assert set(_ours(docker_client)) == before


async def test_cleanup_leftovers_removes_orphans_only(docker_client: Any) -> None:
    spec = ContainerSpec(image=IMAGE)
    live = await launch(docker_client, spec)
    orphan = await launch(
        docker_client, spec, labels={OWNER_LABEL: f"{socket.gethostname()}:999999999"}
    )
    try:
        removed = await anyio.to_thread.run_sync(cleanup_leftovers, docker_client)
        ids = {c["Id"] for c in docker_client.api.containers(all=True)}
        assert removed >= 1
        assert orphan.id not in ids
        assert live.id in ids
    finally:
        await live.remove()
        await orphan.remove()


def test_unavailable_reason_says_what_to_do(
    docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = RLMConfig(image=IMAGE)
    assert unavailable_reason(config) is None
    assert unavailable_reason(config.with_(docker_runtime="runsc")) is None
    missing = unavailable_reason(config.with_(image="rlm-sandbox:no-such-tag"))
    assert missing is not None and "rlm image build" in missing
    runtime = unavailable_reason(config.with_(docker_runtime="no-such-runtime"))
    assert runtime is not None and "setup-docker.sh" in runtime
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    engine = unavailable_reason(config)
    assert engine is not None and "not reachable" in engine and "--backend restricted" in engine


def test_the_security_check_asks_the_engine_once_per_runtime(
    docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docker

    from rlm.security.targets import docker_problem

    opened: list[object] = []
    from_env = docker.from_env

    def counted(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return from_env(*args, **kwargs)

    monkeypatch.setattr(docker, "from_env", counted)
    config = RLMConfig(image=IMAGE, docker_runtime="runsc")
    assert docker_problem(config) is None
    assert len(opened) == 1
    missing = docker_problem(config.with_(docker_runtime="no-such-runtime"))
    assert missing is not None and "setup-docker.sh" in missing
    assert len(opened) == 2


def test_doctor_checks_engine_image_and_both_runtimes(docker_client: Any) -> None:
    checks = {name: (ok, detail) for name, ok, detail in doctor_checks(RLMConfig(image=IMAGE))}
    assert set(checks) == {"docker engine", "sandbox image", "runc", "gVisor (runsc)"}
    assert all(ok for ok, _ in checks.values()), checks
    assert "up to date" in checks["sandbox image"][1]


async def test_a_cancelled_context_load_leaves_a_usable_session(
    runtime: str, sandbox_factory: Any, docker_client: Any
) -> None:
    box = sandbox_factory(runtime=runtime)
    await box.start()
    first = box.container_id
    context = "z" * 100_000_000
    with anyio.move_on_after(0.05) as scope:
        await box.load_context(context)
    assert scope.cancelled_caught
    assert first not in _ours(docker_client)
    result = await box.execute("print(len(context))", 60)
    assert result.stdout == "100000000\n"
    assert (await box.execute(123, 10)).error == "TypeError: a cell must be a str of Python code"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "hint"),
    [
        ({"image": "rlm-sandbox:no-such-tag"}, "rlm image build"),
        ({"runtime": "no-such-runtime"}, "setup-docker.sh"),
    ],
)
async def test_start_says_what_to_do_when_it_cannot_run(
    settings: dict[str, str], hint: str, docker_client: Any
) -> None:
    from rlm.errors import SandboxUnavailable

    before = set(_ours(docker_client))
    spec = ContainerSpec(**{"image": IMAGE, **settings})
    box = DockerSandbox(make_bridge(), ColdStart(spec, docker_client=docker_client))
    with pytest.raises(SandboxUnavailable, match=hint.replace(".", r"\.")):
        await box.start()
    await box.close()
    assert set(_ours(docker_client)) == before
