"""Build the sandbox image (``rlm image build [--offline]``).

The build context is made in memory -- the Dockerfile plus the installed
``rlm_sandbox`` package -- so this works from a checkout and from an installed
package alike. The image is labelled with a hash of the runner's sources, which
tells :func:`image_status` (and ``rlm doctor``) whether an image is out of date.

``offline=True`` needs no image registry: the base is a minimal Debian made by
``debootstrap`` from the machine's own apt mirror and imported into Docker (kept
as ``rlm-base:<suite>``, so later builds are quick). ``images/build-offline.sh``
is the same recipe as a shell script.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlm.errors import SandboxError, SandboxUnavailable

#: The sandbox image's tag unless RLM_IMAGE (or ``image=``) names another.
DEFAULT_IMAGE = "rlm-sandbox:latest"
DEFAULT_BASE = "python:3.12-slim"
OFFLINE_SUITE = "bookworm"
OFFLINE_BASE = f"rlm-base:{OFFLINE_SUITE}"
RUNNER_LABEL = "rlm.sandbox.runner"
ROOTFS_CACHE = Path(os.environ.get("RLM_ROOTFS_CACHE", "/var/cache/rlm"))

#: The Dockerfile, kept identical to images/Dockerfile (a test checks) so that an
#: installed rlm, which has no images/ folder, builds the same image.
DOCKERFILE = """\
# The rlm sandbox image: a Python interpreter, the runner, a non-root user, nothing else.
#
# Build context: this Dockerfile plus the runner package as rlm_sandbox/ (images/build.sh
# and `rlm image build` assemble it). BASE_IMAGE is any image with python3 >= 3.11:
# python:3.12-slim where a registry is reachable, or the debootstrap base that
# images/build-offline.sh imports when none is.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# A fixed uid so the host can run the container as 10001:10001 whatever the base
# image's own users are; no home, no login shell.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /tmp \\
        --shell /usr/sbin/nologin rlm \\
    && rm -rf /var/cache/apt/archives/*.deb /var/lib/apt/lists/*

COPY rlm_sandbox/ /opt/rlm/rlm_sandbox/
# Compiled now because the root filesystem is read-only at run time.
RUN python3 -m compileall -q /opt/rlm/rlm_sandbox \\
    && python3 -c "import sys; assert sys.version_info >= (3, 11), sys.version"

ENV PYTHONPATH=/opt/rlm \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1
LABEL rlm.sandbox.image="1"
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["python3", "-m", "rlm_sandbox"]
"""

Log = Callable[[str], None]


def runner_files() -> dict[str, bytes]:
    """The runner package's sources, by file name, as they go into the image."""
    import rlm_sandbox.runner

    folder = Path(rlm_sandbox.runner.__file__).parent
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.py"))}


def runner_hash(files: dict[str, bytes] | None = None) -> str:
    """Hash of the runner sources; images/build.sh computes the same one."""
    files = runner_files() if files is None else files
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\n" + files[name])
    return digest.hexdigest()


def build_context(files: dict[str, bytes] | None = None) -> bytes:
    """The build context as an in-memory tar: Dockerfile + rlm_sandbox/*.py."""
    files = runner_files() if files is None else files
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entries = {"Dockerfile": DOCKERFILE.encode()}
        entries.update({f"rlm_sandbox/{name}": data for name, data in files.items()})
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_image(
    tag: str = DEFAULT_IMAGE,
    *,
    offline: bool = False,
    base_image: str | None = None,
    docker_client: Any = None,
    log: Log | None = None,
) -> str:
    """Build the sandbox image; returns its id.

    ``offline`` builds on a debootstrap base (made first if missing) instead of
    pulling ``python:3.12-slim``. ``base_image`` overrides either choice.
    """
    import docker
    import docker.errors

    say = log or (lambda line: print(line, file=sys.stderr))
    client = docker_client or docker.from_env(timeout=600)
    try:
        base = base_image or (OFFLINE_BASE if offline else DEFAULT_BASE)
        if offline and base_image is None:
            ensure_offline_base(client, log=say)
        files = runner_files()
        say(f"building {tag} from {base}")
        try:
            stream = client.api.build(
                fileobj=io.BytesIO(build_context(files)),
                custom_context=True,
                tag=tag,
                buildargs={"BASE_IMAGE": base},
                labels={RUNNER_LABEL: runner_hash(files)},
                rm=True,
                forcerm=True,
                network_mode="none",  # RUN steps need no network
                decode=True,
            )
            image_id = None
            for event in stream:
                if "error" in event:
                    raise SandboxError(
                        f"building {tag} failed: {str(event['error']).strip()[:500]}"
                        + (
                            ""
                            if offline
                            else "; with no image registry, use `rlm image build --offline`"
                        )
                    )
                if "aux" in event and isinstance(event["aux"], dict):
                    image_id = event["aux"].get("ID", image_id)
        except docker.errors.APIError as exc:
            raise SandboxError(f"building {tag} failed: {exc}") from None
        return str(image_id or client.images.get(tag).id)
    finally:
        if docker_client is None:
            client.close()


def image_status(tag: str, client: Any) -> tuple[bool, str]:
    """``(usable, detail)`` for ``rlm doctor``: present, and built from this runner?"""
    import docker.errors

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False, f"{tag} not found; run `rlm image build` (or `rlm image build --offline`)"
    built_from = (image.labels or {}).get(RUNNER_LABEL)
    if built_from is None:
        return True, f"{tag} present (not built by rlm: runner version unknown)"
    if built_from != runner_hash():
        return False, f"{tag} holds an older runner; rebuild it with `rlm image build`"
    return True, f"{tag} present and up to date"


def image_is_current(tag: str, client: Any) -> bool:
    return image_status(tag, client)[1].endswith("up to date")


# -- the offline base -------------------------------------------------------------------


def apt_mirror(suite: str = OFFLINE_SUITE, root: Path = Path("/etc/apt")) -> str | None:
    """The first Debian mirror the machine's apt sources use for ``suite``."""
    for path in sorted((root / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.lstrip().startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
                and fields.get("uris")
            ):
                return fields["uris"].split()[0]
    lists = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            if words and words[0].startswith("["):
                while words and not words[0].endswith("]"):
                    words = words[1:]
                words = words[1:]
            if len(words) >= 2 and words[1] == suite:
                return words[0]
    return None


def ensure_offline_base(
    client: Any,
    *,
    tag: str = OFFLINE_BASE,
    suite: str = OFFLINE_SUITE,
    cache: Path = ROOTFS_CACHE,
    log: Log | None = None,
) -> None:
    """Make ``tag`` from a debootstrap rootfs unless the engine already has it."""
    import docker.errors

    say = log or (lambda line: print(line, file=sys.stderr))
    try:
        client.images.get(tag)
        return
    except docker.errors.ImageNotFound:
        pass
    rootfs = cache / f"rootfs-{suite}"
    marker = rootfs / ".rlm-complete"
    if not marker.exists():
        if shutil.which("debootstrap") is None:
            raise SandboxUnavailable(
                "debootstrap is missing: install it (apt-get install debootstrap) "
                "or run scripts/setup-docker.sh"
            )
        if os.geteuid() != 0:
            raise SandboxUnavailable(
                "building the offline base needs root for debootstrap: run "
                "`sudo images/build-offline.sh` or scripts/setup-docker.sh"
            )
        mirror = os.environ.get("RLM_APT_MIRROR") or apt_mirror(suite)
        if not mirror:
            raise SandboxUnavailable(
                f"no apt mirror for {suite} in /etc/apt sources; set RLM_APT_MIRROR"
            )
        say(f"debootstrap {suite} from {mirror} (about a minute)")
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3", suite, str(rootfs), mirror],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if done.returncode != 0:
            raise SandboxError(
                f"debootstrap failed: {done.stderr.decode(errors='replace').strip()[-500:]}"
            )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / junk).glob("*"):
                if item.is_file():
                    item.unlink()
        marker.touch()
    say(f"importing {rootfs} as {tag}")
    repository, _, version = tag.rpartition(":")
    with subprocess.Popen(
        ["tar", "--exclude=./.rlm-complete", "-C", str(rootfs), "-c", "."],
        stdout=subprocess.PIPE,
    ) as tar:
        assert tar.stdout is not None
        client.api.import_image_from_stream(tar.stdout, repository=repository, tag=version)
    if tar.returncode != 0:
        raise SandboxError(f"tar of {rootfs} failed (exit {tar.returncode})")
