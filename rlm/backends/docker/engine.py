"""The Docker engine connection: where it is, whether its transport is safe, and how
to open it.

A sandbox's whole traffic (the context, every prompt and answer) crosses the engine
connection, and the engine runs whatever rlm asks of it with root on its machine.
An engine reached over TCP must therefore be reached over verified TLS
(``DOCKER_TLS_VERIFY=1`` with the CA, certificate and key in ``DOCKER_CERT_PATH``):
plain TCP, or TLS that does not check the engine's certificate, is refused with a
clear message unless the engine is on this host's loopback (traffic that never
leaves the kernel; see SECURITY.md) or the operator opts in with
``RLM_DOCKER_ALLOW_PLAINTEXT=1``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from rlm.errors import SandboxUnavailable

if TYPE_CHECKING:
    from docker import DockerClient

#: Set to 1 to let rlm use an engine over plain TCP (or TLS without verification).
ALLOW_PLAINTEXT_ENV = "RLM_DOCKER_ALLOW_PLAINTEXT"
#: The API version a TLS client starts with before it asks the engine for its own.
MIN_API_VERSION = "1.24"


def engine_address() -> str:
    """The engine this process talks to (``DOCKER_HOST`` or the local socket)."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_loopback(host: str) -> bool:
    """``host`` is this machine's loopback: 127.0.0.0/8, ``::1`` or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def transport_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why the engine named by ``env`` (``os.environ``) must not be used, or None.

    A Unix socket is fine. ``tcp://`` needs ``DOCKER_TLS_VERIFY`` (docker's own
    variable, which also turns TLS on), unless the host is loopback or
    ``RLM_DOCKER_ALLOW_PLAINTEXT=1``.
    """
    env = os.environ if env is None else env
    url = env.get("DOCKER_HOST") or ""
    scheme, _, _ = url.partition("://")
    if scheme not in ("tcp", "http", "https"):
        return None
    # docker-py: DOCKER_TLS_VERIFY set to anything but "" verifies; "" or unset does not.
    if env.get("DOCKER_TLS_VERIFY", "") != "":
        return None
    host = urlsplit(url if "://" in url else f"tcp://{url}").hostname or ""
    if is_loopback(host) or _truthy(env.get(ALLOW_PLAINTEXT_ENV)):
        return None
    how = (
        "TLS without checking its certificate (DOCKER_CERT_PATH without DOCKER_TLS_VERIFY)"
        if env.get("DOCKER_CERT_PATH") or scheme == "https"
        else "plain TCP, without TLS"
    )
    return (
        f"refusing the Docker engine at {url}: it would be reached over {how}, so anyone "
        "on the way could read every context and prompt and impersonate the engine; set "
        "DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem), or set "
        f"{ALLOW_PLAINTEXT_ENV}=1 if the link is private and you accept this"
    )


def explain_failure(detail: str, env: Mapping[str, str] | None = None) -> str | None:
    """What a failed connection (``detail``: the error's text) means over TLS, or
    None when it is not a TLS problem."""
    env = os.environ if env is None else env
    url = env.get("DOCKER_HOST") or engine_address()
    certs = env.get("DOCKER_CERT_PATH") or "~/.docker"
    text = detail.lower()
    if "certificate_verify_failed" in text or "certificate verify failed" in text:
        return (
            f"the Docker engine at {url} failed TLS verification: its certificate is not "
            f"signed by the CA in {certs}/ca.pem (or does not name this host); check "
            "DOCKER_CERT_PATH and that DOCKER_HOST is the engine you mean"
        )
    if "wrong_version_number" in text or "wrong version number" in text:
        return (
            f"the Docker engine at {url} does not speak TLS (DOCKER_TLS_VERIFY is set); "
            "configure the engine with tlsverify, or check DOCKER_HOST"
        )
    if "http request to an https server" in text:
        return (
            f"the Docker engine at {url} requires TLS: set DOCKER_TLS_VERIFY=1 and "
            "DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem)"
        )
    if "path to a certificate and key files must be provided" in text:
        return (
            f"DOCKER_TLS_VERIFY is set but {certs} does not hold cert.pem and key.pem "
            "(and ca.pem): point DOCKER_CERT_PATH at the client's certificates"
        )
    if ("tlsv1 alert" in text or "certificate required" in text) and "ssl" in text:
        return (
            f"the Docker engine at {url} refused this client's TLS certificate; check "
            f"{certs}/cert.pem and key.pem"
        )
    return None


def connect(docker_client: DockerClient | None = None, *, timeout: int = 120) -> DockerClient:
    """``docker_client`` if given, else a new client for the engine of the environment.

    Raises :class:`SandboxUnavailable` with what to do when the environment names an
    engine over an unsafe transport (:func:`transport_problem`) or TLS fails.
    Blocking (it asks the engine for its API version): call it off the event loop.
    """
    if docker_client is not None:
        return docker_client
    problem = transport_problem()
    if problem is not None:
        raise SandboxUnavailable(problem)
    import docker

    try:
        return _from_env(timeout)
    except docker.errors.DockerException as exc:
        explained = explain_failure(str(exc))
        if explained is not None:
            raise SandboxUnavailable(explained) from None
        raise


def _from_env(timeout: int) -> DockerClient:
    """``docker.from_env`` (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``),
    except that a verified TLS engine is checked against ``DOCKER_CERT_PATH``'s CA only.

    requests lets ``REQUESTS_CA_BUNDLE`` (or ``CURL_CA_BUNDLE``) replace the CA a
    session was given, so with either set (common where a proxy's CA is installed)
    docker's client checks the engine against the system's CAs instead: the engine's
    own CA fails, and any certificate those CAs sign would pass.
    """
    import docker
    from docker.utils import kwargs_from_env

    params = kwargs_from_env()
    if not (params.get("tls") and os.environ.get("DOCKER_TLS_VERIFY", "") != ""):
        return docker.from_env(timeout=timeout)
    # A fixed version, so that nothing is asked of the engine before the CA is pinned.
    client = docker.DockerClient(timeout=timeout, version=MIN_API_VERSION, **params)
    api = client.api
    original = api.merge_environment_settings

    def merge(url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        settings = original(url, proxies, stream, verify, cert)
        settings["verify"] = api.verify  # DOCKER_CERT_PATH's ca.pem, never the env's
        return settings

    api.merge_environment_settings = merge  # type: ignore[method-assign]
    try:
        # What version="auto" does (docker-py has no public setter), over the pinned CA.
        cast(Any, api)._version = str(api.version(api_version=False)["ApiVersion"])
    except Exception as exc:
        client.close()
        raise docker.errors.DockerException(
            f"Error while fetching server API version: {exc}"
        ) from exc
    return client
