"""Reading the service's config file (TOML), with a clear error for every mistake.

Keys are checked against the tables of :mod:`rlm.service.keys`; a key they do not
list is an error, since a typo must not quietly fall back to a default
(``max_concurent_runs`` leaving a tenant at 4 runs instead of 1). Every error names
the file, the section and the key, and says what to change.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlm.errors import ConfigurationError
from rlm.limits import SessionLimits
from rlm.service.keys import (
    CONFIG_HELP,
    ENGINE_KEYS,
    PROFILE_KEYS,
    SECTIONS,
    SERVER_KEYS,
    TENANT_KEYS,
    Invalid,
    Key,
)
from rlm.service.settings import Engine, Profile, ServerSettings, ServiceConfig, Tenant

__all__ = [
    "CONFIG_HELP",
    "Engine",
    "Profile",
    "ServerSettings",
    "ServiceConfig",
    "Tenant",
    "load_config",
]

#: Profile names are what clients pass as ``model``: kept to characters that need no
#: quoting in a URL, a log line or a metrics label.
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}")
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOP_LEVEL = ("server", "profiles", "tenants", "engines")


def load_config(path: str | Path) -> ServiceConfig:
    """Read and check the config file; any problem is a ConfigurationError naming the
    file, the section and the key, and saying what to change."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigurationError(
            f"{path}: no such config file; pass --config FILE (rlm serve --help lists its keys)"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the config file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path}: not valid TOML: the file is not UTF-8") from None
    return _Loader(path).load(raw)


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder = path.resolve().parent

    def fail(self, where: str, problem: str) -> ConfigurationError:
        return ConfigurationError(f"{self.path}: {where}: {problem}")

    def load(self, raw: dict[str, Any]) -> ServiceConfig:
        for name in raw:
            if name not in _TOP_LEVEL:
                raise self.fail(
                    f"[{name}]",
                    f"unknown section{_suggest(name, _TOP_LEVEL)}; the sections are "
                    + ", ".join(SECTIONS)
                    + " (rlm serve --help lists every key)",
                )
        server = ServerSettings(**self.values("[server]", raw.get("server", {}), SERVER_KEYS))
        if "://" not in server.database and server.database != ":memory:":
            server = replace(server, database=str(self.folder / server.database))
        profiles = self.profiles(raw.get("profiles"), server)
        tenants = self.tenants(raw.get("tenants"), profiles)
        engines = self.engines(raw.get("engines", []))
        return ServiceConfig(server, profiles, tenants, engines)

    def values(self, where: str, table: object, keys: tuple[Key, ...]) -> dict[str, Any]:
        """The checked values a table gives (its limits under "limits")."""
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table of keys")
        known = {key.name: key for key in keys}
        for name in table:
            if name not in known:
                raise self.fail(
                    f"{where} {name}",
                    f"unknown key{_suggest(name, list(known))}; "
                    "rlm serve --help lists the keys of each section",
                )
        values: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        for key in keys:
            if key.name not in table:
                continue
            try:
                value = key.kind.parse(table[key.name])
            except Invalid as exc:
                raise self.fail(f"{where} {key.name}", str(exc)) from None
            if key.path and isinstance(value, str):
                value = str(self.folder / value)
            (limits if key.target == "limits" else values)[key.name] = value
        if limits:
            if "allowed_models" in limits:
                limits["allowed_models"] = frozenset(limits["allowed_models"])
            values["limits"] = SessionLimits(**limits)
        return values

    def required(self, where: str, values: dict[str, Any], *names: str) -> None:
        for name in names:
            if name not in values:
                raise self.fail(where, f"{name} is missing; it is required")

    def profiles(self, raw: object, server: ServerSettings) -> dict[str, Profile]:
        if raw is None or raw == {}:
            raise self.fail(
                "[profiles]",
                'no profile is defined; add one, like [profiles.rlm] with model = "gpt-4.1"',
            )
        if not isinstance(raw, dict):
            raise self.fail("[profiles]", "must be tables, like [profiles.rlm]")
        profiles: dict[str, Profile] = {}
        for name, table in raw.items():
            where = f"[profiles.{name}]"
            if not _PROFILE_NAME.fullmatch(name):
                raise self.fail(
                    where,
                    "a profile's name is what clients pass as `model`: use letters, digits "
                    "and . _ : / - (at most 100 characters)",
                )
            values = self.values(where, table, PROFILE_KEYS)
            self.required(where, values, "model")
            profile = Profile(name=name, **values)
            if profile.backend == "restricted":
                if not server.allow_unsafe_restricted:
                    raise self.fail(
                        f"{where} backend",
                        '"restricted" runs tenants\' model code inside the server process, '
                        'not in a container; use backend = "docker", or set [server] '
                        "allow_unsafe_restricted = true if every tenant is trusted",
                    )
                if profile.runtime != "runc":
                    raise self.fail(
                        f"{where} runtime",
                        'runsc (gVisor) is a Docker runtime; it needs backend = "docker"',
                    )
            profiles[name] = profile
        return profiles

    def tenants(self, raw: object, profiles: Mapping[str, Profile]) -> tuple[Tenant, ...]:
        if raw is None or raw == []:
            raise self.fail(
                "[[tenants]]",
                "no tenant is defined; add one: [[tenants]] with name, token_sha256 and profiles",
            )
        if not isinstance(raw, list):
            raise self.fail("[[tenants]]", "must be an array of tables: write [[tenants]]")
        tenants: list[Tenant] = []
        names: set[str] = set()
        hashes: dict[str, str] = {}
        for number, table in enumerate(raw, 1):
            label = table.get("name") if isinstance(table, dict) else None
            where = f"[[tenants]] #{number}" + (f" ({label})" if isinstance(label, str) else "")
            values = self.values(where, table, TENANT_KEYS)
            self.required(where, values, "name", "token_sha256", "profiles")
            tenant = Tenant(**values)
            if not _TENANT_NAME.fullmatch(tenant.name):
                raise self.fail(
                    f"{where} name", "use letters, digits and . _ - (at most 64 characters)"
                )
            if tenant.name in names:
                raise self.fail(f"{where} name", f"{tenant.name!r} names two tenants")
            if tenant.token_sha256 in hashes:
                raise self.fail(
                    f"{where} token_sha256",
                    f"the same token hash as tenant {hashes[tenant.token_sha256]!r}; "
                    "give every tenant a token of its own",
                )
            for profile in tenant.profiles:
                if profile not in profiles:
                    raise self.fail(
                        f"{where} profiles",
                        f"no profile is named {profile!r}{_suggest(profile, list(profiles))}; "
                        f"defined: {', '.join(profiles)}",
                    )
            names.add(tenant.name)
            hashes[tenant.token_sha256] = tenant.name
            tenants.append(tenant)
        return tuple(tenants)

    def engines(self, raw: object) -> tuple[Engine, ...]:
        if not isinstance(raw, list):
            raise self.fail("[[engines]]", "must be an array of tables: write [[engines]]")
        engines: list[Engine] = []
        for number, table in enumerate(raw, 1):
            where = f"[[engines]] #{number}"
            values = self.values(where, table, ENGINE_KEYS)
            self.required(where, values, "url")
            engine = Engine(**values)
            if (engine.client_cert is None) != (engine.client_key is None):
                raise self.fail(where, "client_cert and client_key go together: give both")
            tls = engine.ca_cert is not None or engine.client_cert is not None
            plain_tcp = engine.url.startswith(("tcp://", "http://")) and not tls
            if plain_tcp and not engine.insecure_plaintext:
                raise self.fail(
                    where,
                    f"{engine.url} has no TLS, and a plain-TCP Docker API is root on that "
                    "machine for anyone who can reach it: give ca_cert (and client_cert, "
                    "client_key), or set insecure_plaintext = true on a trusted network",
                )
            for name in ("ca_cert", "client_cert", "client_key"):
                path = getattr(engine, name)
                if path is not None and not os.path.isfile(path):
                    raise self.fail(f"{where} {name}", f"{path} is not a readable file")
            if any(e.url == engine.url for e in engines):
                raise self.fail(f"{where} url", f"{engine.url} is listed twice")
            engines.append(engine)
        return tuple(engines)


def _suggest(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
