#!/usr/bin/env bash
# Make this machine ready for the Docker sandbox: engine, gVisor, a running dockerd
# and an up-to-date rlm-sandbox image. Safe to run again: each step checks first.
#
#   scripts/setup-docker.sh            # as root (or with sudo available)
#
# Environment:
#   RLM_IMAGE=rlm-sandbox:latest   tag to build
#   RLM_IMAGE_BUILD=auto|offline|online
#       auto (default): build FROM python:3.12-slim when that image is already
#       present locally, else build offline from a debootstrap base (no registry
#       needed). online: build FROM python:3.12-slim, pulling it if needed.
#   RLM_DOCKERD_LOG=/var/log/rlm-dockerd.log
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${RLM_IMAGE:-rlm-sandbox:latest}"
build_mode="${RLM_IMAGE_BUILD:-auto}"
dockerd_log="${RLM_DOCKERD_LOG:-/var/log/rlm-dockerd.log}"

say() { printf '[setup-docker] %s\n' "$*" >&2; }
die() { printf '[setup-docker] ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    die "run as root (or install sudo): installing packages and starting dockerd need root"
fi

# --- packages -----------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v runsc >/dev/null 2>&1 || missing+=(runsc)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# `ip`: the remote-engine test gives its second dockerd a bridge of its own.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# `openssl`: the TLS engine test makes its CA and certificates with it.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} from Debian's packages"
    "${SUDO[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y --no-install-recommends \
        "${missing[@]}" || die "apt-get install ${missing[*]} failed"
fi
runsc_path="$(command -v runsc)"

# --- register gVisor with Docker (merge into daemon.json, never clobber) --------
daemon_json=/etc/docker/daemon.json
"${SUDO[@]}" mkdir -p /etc/docker
merge_out="$("${SUDO[@]}" python3 - "$daemon_json" "$runsc_path" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        text = f.read()
    config = json.loads(text) if text.strip() else {}
except FileNotFoundError:
    config = {}
except json.JSONDecodeError as exc:
    sys.exit(f"{path} is not valid JSON ({exc}); fix it by hand and rerun")
if not isinstance(config, dict):
    sys.exit(f"{path} must hold a JSON object; fix it by hand and rerun")
# --network=none: runsc under Docker needs it on this kernel. --oci-seccomp: without
# it runsc does not apply the container's seccomp profile inside the sandbox
# (/proc/self/status says "Seccomp: 0" there); rlm's own profile works under it.
want = {"path": runsc, "runtimeArgs": ["--network=none", "--oci-seccomp"]}
runtimes = config.setdefault("runtimes", {})
if runtimes.get("runsc") == want:
    print("unchanged")
else:
    runtimes["runsc"] = want
    tmp = path + ".rlm-tmp"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    print("changed")
PY
)" || die "could not update $daemon_json"

# --- userns-remap's user ----------------------------------------------------------
# `"userns-remap": "default"` maps container users to dockremap's subordinate ids
# (container root becomes an unprivileged host uid). This engine does not turn it on
# (it would hide the images already built); the tests start an engine that does, and
# an operator may. Make the user and its ranges now so that either just works.
if ! getent passwd dockremap >/dev/null; then
    say "adding the dockremap user for userns-remap"
    "${SUDO[@]}" useradd --system --no-create-home --shell /usr/sbin/nologin dockremap
fi
for table in /etc/subuid /etc/subgid; do
    if ! grep -q '^dockremap:' "$table" 2>/dev/null; then
        start="$(awk -F: 'BEGIN { m = 100000 } NF == 3 && $2 + $3 > m { m = $2 + $3 } END { print m }' "$table" 2>/dev/null || echo 100000)"
        echo "dockremap:${start}:65536" | "${SUDO[@]}" tee -a "$table" >/dev/null
    fi
done

# --- dockerd --------------------------------------------------------------------
engine_up() { docker info >/dev/null 2>&1; }

if engine_up; then
    if [ "$merge_out" = changed ] && [ -z "${DOCKER_HOST:-}" ] && [ -f /var/run/docker.pid ]; then
        # SIGHUP makes dockerd re-read daemon.json, runtimes included; containers
        # already running keep going. Wait until `docker info` shows the new args.
        say "reloading dockerd so it sees the runsc runtime with --oci-seccomp"
        "${SUDO[@]}" kill -HUP "$(cat /var/run/docker.pid)"
        for _ in $(seq 1 20); do
            docker info --format '{{json .Runtimes.runsc}}' 2>/dev/null | grep -q -- '--oci-seccomp' && break
            sleep 0.5
        done
    elif [ "$merge_out" = changed ]; then
        say "WARNING: $daemon_json changed but this engine was not reloaded; restart dockerd"
    fi
else
    [ -z "${DOCKER_HOST:-}" ] || die "DOCKER_HOST=$DOCKER_HOST is set but that engine does not answer"
    say "starting dockerd (log: $dockerd_log)"
    # No systemd here: run it detached from this shell so it outlives the script.
    "${SUDO[@]}" setsid nohup dockerd >>"$dockerd_log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        engine_up && break
        sleep 1
    done
    engine_up || die "dockerd did not come up within 60 s; see $dockerd_log"
fi
say "engine: $(docker version --format '{{.Server.Version}}') ($(docker info --format '{{.Driver}}'))"
docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' \
    || die "dockerd does not list the runsc runtime; check $daemon_json and restart dockerd"
docker info --format '{{json .Runtimes.runsc}}' | grep -q -- '--oci-seccomp' \
    || die "the engine's runsc runtime lacks --oci-seccomp (no seccomp filter inside gVisor); check $daemon_json and restart dockerd"

# --- image ----------------------------------------------------------------------
slim=python:3.12-slim
case "$build_mode" in
    auto)
        if docker image inspect "$slim" >/dev/null 2>&1; then build_mode=online; else build_mode=offline; fi ;;
    online|offline) ;;
    *) die "RLM_IMAGE_BUILD must be auto, online or offline (got $build_mode)" ;;
esac
if [ "$build_mode" = offline ]; then
    "$here/../images/build-offline.sh" "$image"
else
    "$here/../images/build.sh" "$image" "$slim"
fi
docker run --rm --network none --entrypoint python3 "$image" -c \
    'import rlm_sandbox.runner, json; print("image ok")' >/dev/null \
    || die "image $image was built but its runner does not import"
say "ready: image $image, runtimes $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}')"
