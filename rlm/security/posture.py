"""The sandbox's posture, probed from inside: what ``rlm security-check`` adds to the
corpus for each Docker target.

The corpus judges what payloads achieve; this judges the container they ran in, as
its own process sees it: a seccomp filter (``Seccomp: 2``), no capability,
no-new-privileges, a read-only root and no interface but ``lo``. A deployment that
contains every payload can still lack one of these (a gVisor runtime registered
without ``--oci-seccomp`` runs with no filter at all), and then the check fails.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rlm.bridge import SessionBridge
from rlm.errors import BridgeRefusal
from rlm.session import SessionState

if TYPE_CHECKING:
    from rlm.security.targets import Target
    from rlm.subcalls.batcher import SubResult

#: Runs in the sandbox; prints one JSON object (stdlib only, no sub-calls).
PROBE = r"""
import ctypes, errno, json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
facts = {k: status[k].strip() for k in ("Seccomp", "CapEff", "CapPrm", "CapBnd") if k in status}
try:
    facts["no_new_privs"] = ctypes.CDLL(None, use_errno=True).prctl(39, 0, 0, 0, 0)
except OSError:
    facts["no_new_privs"] = status.get("NoNewPrivs", "?").strip()
lines = open("/proc/net/dev").read().splitlines()[2:]
facts["interfaces"] = sorted(line.split(":")[0].strip() for line in lines)
facts["root"] = [l.split()[3].split(",")[0] for l in open("/proc/mounts") if l.split()[1] == "/"]
try:
    open("/.rlm-posture", "w").close()
    os.remove("/.rlm-posture")
    facts["root_write"] = "ok"
except OSError as e:
    facts["root_write"] = errno.errorcode.get(e.errno, str(e))
print(json.dumps(facts))
"""


class _NoCalls:
    async def run(
        self,
        session: SessionState,
        model: str,
        prompts: list[str],
        max_concurrent: int | None,
        *,
        on_result: Any = None,
    ) -> list[SubResult]:
        raise BridgeRefusal("the posture probe makes no sub-calls")


def judge(facts: dict[str, Any]) -> list[str]:
    """What is wrong with the posture ``facts`` (the probe's output) report."""
    problems = []
    if facts.get("Seccomp") != "2":
        problems.append(
            f"the sandbox process runs without a seccomp filter (Seccomp: {facts.get('Seccomp')}); "
            "under gVisor, register runsc with --oci-seccomp"
        )
    for key in ("CapEff", "CapPrm", "CapBnd"):
        value = str(facts.get(key, "?"))
        if not all(c == "0" for c in value):
            problems.append(f"the sandbox process holds capabilities ({key}: {value})")
    if facts.get("no_new_privs") not in (1, "1"):
        problems.append("the sandbox process may gain privileges (no-new-privileges is off)")
    if facts.get("root") != ["ro"] or facts.get("root_write") == "ok":
        problems.append("the sandbox's root filesystem is writable")
    if facts.get("interfaces") != ["lo"]:
        problems.append(f"the sandbox has network interfaces besides lo: {facts.get('interfaces')}")
    return problems


async def probe(target: Target) -> list[str]:
    """Start one sandbox of ``target``, run :data:`PROBE` in it, judge what it saw."""
    sandbox = target.factory(SessionBridge(_NoCalls(), SessionState(sub_model="none")))
    try:
        await sandbox.start()
        result = await sandbox.execute(PROBE, 60.0)
    except Exception as exc:
        return [f"{target.name}: the posture probe could not run: {exc}"]
    finally:
        await sandbox.close()
        if target.close is not None:
            target.close()  # the engine connection the factory opened for the probe
    if result.error is not None:
        return [f"{target.name}: the posture probe failed: {result.error[-300:]}"]
    try:
        facts = json.loads(result.stdout)
    except ValueError:
        return [f"{target.name}: the posture probe printed {result.stdout[:200]!r}"]
    return [f"{target.name}: {problem}" for problem in judge(facts)]
