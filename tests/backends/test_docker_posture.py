"""The sandbox's posture as its own process sees it, on each runtime.

One probe per runtime reads ``/proc/self/status`` and tries what rlm's seccomp
allow-list (``rlm/backends/docker/seccomp.json``) refuses. It fails if the process
runs without a seccomp filter (under gVisor that is a runsc registered without
``--oci-seccomp``), with any capability, without no-new-privileges, on a writable
root, or with a network interface other than ``lo``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.docker

PROBE = r"""
import ctypes, errno, json, os, socket, threading
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
keys = ("Seccomp", "CapEff", "CapPrm", "CapInh", "CapBnd")
facts = {k: status[k].strip() for k in keys if k in status}
libc = ctypes.CDLL(None, use_errno=True)
# gVisor's /proc/self/status has no NoNewPrivs line: ask the kernel (PR_GET_NO_NEW_PRIVS).
facts["no_new_privs"] = libc.prctl(39, 0, 0, 0, 0)
facts["NoNewPrivs"] = status.get("NoNewPrivs", "").strip()
lines = open("/proc/net/dev").read().splitlines()[2:]
facts["netdev"] = sorted(line.split(":")[0].strip() for line in lines)
facts["root_ro"] = [l.split()[3].split(",")[0] for l in open("/proc/mounts") if l.split()[1] == "/"]
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
facts["write_root"] = attempt(lambda: open("/posture", "w").close())
def raw(number, *args):
    ctypes.set_errno(0)
    result = libc.syscall(number, *args)
    return "ok" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
def netlink(kind, protocol):
    return attempt(lambda: socket.socket(socket.AF_NETLINK, kind, protocol).close())
facts["netlink_route"] = netlink(socket.SOCK_RAW, 0)
facts["netlink_xfrm"] = netlink(socket.SOCK_RAW, 6)
facts["netlink_uevent"] = netlink(socket.SOCK_DGRAM, 15)
facts["if_nameindex"] = [name for _, name in socket.if_nameindex()]
facts["packet"] = attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close())
facts["unshare_user"] = raw(272, 0x10000000)  # unshare(CLONE_NEWUSER)
facts["clone3"] = raw(435, 0, 0)  # ENOSYS, so that glibc falls back to clone
facts["io_uring_setup"] = raw(425, 1, 0)
facts["memfd_create"] = raw(319, b"x", 0)
facts["ptrace_traceme"] = raw(101, 0, 0, 0, 0)
facts["keyctl"] = raw(250, 0, 0, 0, 0, 0)
seen = []
t = threading.Thread(target=seen.append, args=(1,))
t.start(); t.join()
facts["thread"] = seen == [1]
facts["loopback_socket"] = attempt(lambda: socket.socket().close())
print(json.dumps(facts))
"""


@pytest.fixture
async def posture(runtime: str, sandbox_factory: Any) -> dict[str, Any]:
    box = sandbox_factory(runtime=runtime)
    await box.start()
    result = await box.execute(PROBE, 60)
    assert result.error is None, result.error
    return dict(json.loads(result.stdout))


def test_the_sandbox_process_runs_under_a_seccomp_filter(posture: dict[str, Any]) -> None:
    # 2 = SECCOMP_MODE_FILTER; 0 would be a runsc registered without --oci-seccomp.
    assert posture["Seccomp"] == "2", posture


def test_no_capabilities_and_no_new_privileges(posture: dict[str, Any]) -> None:
    for key in ("CapEff", "CapPrm", "CapInh", "CapBnd"):
        assert int(posture[key], 16) == 0, (key, posture[key])
    assert posture["no_new_privs"] == 1
    assert posture["NoNewPrivs"] in ("1", "")  # runc's kernel says 1; gVisor has no line


def test_read_only_root_and_loopback_only(posture: dict[str, Any]) -> None:
    assert posture["root_ro"] == ["ro"]
    assert posture["write_root"] in ("EROFS", "EACCES")
    assert posture["netdev"] == ["lo"]


def test_rlms_allow_list_is_the_filter(posture: dict[str, Any]) -> None:
    """What Docker's default profile allows and rlm's refuses, refused on both runtimes."""
    refused = {
        key: posture[key]
        for key in ("netlink_xfrm", "packet", "unshare_user", "io_uring_setup", "memfd_create")
    }
    assert refused == dict.fromkeys(refused, "EPERM"), refused
    assert posture["ptrace_traceme"] == "EPERM"
    assert posture["keyctl"] == "EPERM"
    # clone3 answers ENOSYS (not EPERM), so threads still start through clone.
    assert posture["clone3"] == "ENOSYS"
    assert posture["thread"] is True
    assert posture["loopback_socket"] == "ok"
    # Route netlink (read-only here) stays, for if_nameindex and getaddrinfo.
    assert posture["netlink_route"] == "ok"
    assert posture["if_nameindex"] == ["lo"]
    # gVisor has no uevent netlink at all (EPROTONOSUPPORT); runc's filter says EPERM.
    assert posture["netlink_uevent"] in ("EPERM", "EPROTONOSUPPORT")
