"""The sandbox image: one Dockerfile for checkout and install, offline mirror, builds."""

from __future__ import annotations

import contextlib
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from rlm.image import (
    DOCKERFILE,
    OFFLINE_BASE,
    RUNNER_LABEL,
    apt_mirror,
    build_context,
    build_image,
    image_status,
    runner_files,
    runner_hash,
)
from tests.support import IMAGE

REPO = Path(__file__).resolve().parents[2]


def test_the_packaged_dockerfile_is_images_dockerfile() -> None:
    assert (REPO / "images" / "Dockerfile").read_text() == DOCKERFILE


def test_shell_and_python_agree_on_the_runner_hash() -> None:
    script = (
        'cd "$1" && for f in $(ls -- *.py | LC_ALL=C sort); do printf "%s\\n" "$f"; cat "$f"; done'
        " | sha256sum | cut -c1-64"
    )
    out = subprocess.run(
        ["bash", "-c", script, "_", str(REPO / "sandbox")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == runner_hash()


def test_build_context_holds_the_dockerfile_and_the_runner() -> None:
    with tarfile.open(fileobj=BytesIO(build_context())) as tar:
        names = set(tar.getnames())
    assert "Dockerfile" in names
    assert {f"rlm_sandbox/{n}" for n in runner_files()} <= names
    assert {"rlm_sandbox/runner.py", "rlm_sandbox/protocol.py", "rlm_sandbox/api.py"} <= names


def test_apt_mirror_reads_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian http://other.example/d\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    assert apt_mirror("trixie", tmp_path) is None


def test_apt_mirror_reads_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"


def test_apt_mirror_on_this_machine_comes_from_its_sources() -> None:
    mirror = apt_mirror()
    assert mirror is not None and mirror.startswith(("http://", "https://"))
    sources = "".join(p.read_text() for p in Path("/etc/apt").rglob("*.sources"))
    sources += "".join(p.read_text() for p in Path("/etc/apt").rglob("*.list"))
    assert mirror in sources


@pytest.mark.docker
def test_the_test_image_runs_this_checkouts_runner(docker_client: Any) -> None:
    # The label says which runner an image was built from; this reads the runner
    # files inside the image itself and hashes them as runner_hash() does.
    script = (
        "import hashlib, pathlib\n"
        "d = hashlib.sha256()\n"
        "for p in sorted(pathlib.Path('/opt/rlm/rlm_sandbox').glob('*.py')):\n"
        "    d.update(p.name.encode() + b'\\n' + p.read_bytes())\n"
        "print(d.hexdigest())\n"
    )
    out = docker_client.containers.run(
        IMAGE, ["-c", script], entrypoint="python3", network_mode="none", remove=True
    )
    assert out.decode().strip() == runner_hash()


def _tiny_image(client: Any, tag: str, dockerfile: str) -> None:
    buf = BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.encode()), ("x", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, BytesIO(data))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)


@pytest.mark.docker
def test_image_status_tells_current_stale_foreign_and_missing_images(docker_client: Any) -> None:
    current, stale, foreign = (
        "rlm-status-test:current",
        "rlm-status-test:stale",
        "rlm-status-test:foreign",
    )
    try:
        _tiny_image(docker_client, current, f"FROM {IMAGE}\nLABEL {RUNNER_LABEL}={runner_hash()}\n")
        _tiny_image(docker_client, stale, f"FROM {IMAGE}\nLABEL {RUNNER_LABEL}={'0' * 64}\n")
        _tiny_image(docker_client, foreign, "FROM scratch\nCOPY x /x\n")
        assert image_status(current, docker_client) == (True, f"{current} present and up to date")
        ok, detail = image_status(stale, docker_client)
        assert not ok and "older runner" in detail and "rlm image build" in detail
        ok, detail = image_status(foreign, docker_client)
        assert ok and "not built by rlm" in detail
        ok, detail = image_status("rlm-status-test:absent", docker_client)
        assert not ok and "not found" in detail and "--offline" in detail
    finally:
        for tag in (current, stale, foreign):
            with contextlib.suppress(Exception):
                docker_client.images.remove(tag, force=True)


@pytest.mark.docker
def test_build_image_builds_a_working_image(docker_client: Any) -> None:
    tag = "rlm-sandbox:build-test"
    try:
        docker_client.images.get(OFFLINE_BASE)
        base = OFFLINE_BASE
    except Exception:
        base = "python:3.12-slim"
    lines: list[str] = []
    image_id = build_image(tag, base_image=base, docker_client=docker_client, log=lines.append)
    try:
        image = docker_client.images.get(tag)
        assert image.id == image_id
        assert image.labels["rlm.sandbox.runner"] == runner_hash()
        assert image.attrs["Config"]["User"] == "10001:10001"
        out = docker_client.containers.run(
            tag,
            entrypoint=["python3", "-c", "import os, rlm_sandbox.runner; print(os.getuid())"],
            network_mode="none",
            remove=True,
        )
        assert out.strip() == b"10001"
        assert any("building" in line for line in lines)
    finally:
        docker_client.images.remove(tag, noprune=False)
