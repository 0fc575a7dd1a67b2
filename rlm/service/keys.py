"""Every key of the service's config file, once: its section, type, default and meaning.

The loader (:mod:`rlm.service.config`) checks a file against these tables and
:data:`CONFIG_HELP` (what ``rlm serve --help`` prints) is written from them, so the
help cannot drift from what is accepted. Defaults are read from the dataclass fields
(:mod:`rlm.service.settings`, :class:`rlm.limits.SessionLimits`), never restated here.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields

from rlm.config import parse_prices
from rlm.errors import ConfigurationError
from rlm.limits import SessionLimits
from rlm.service.settings import Engine, Profile, ServerSettings, Tenant

_SHA256 = re.compile(r"[0-9a-f]{64}")
#: What a key typed "or unlimited" takes for no bound (TOML has no null).
UNLIMITED = "unlimited"


class Invalid(ValueError):
    """A value's problem, said as what it must be."""


@dataclass(frozen=True)
class Kind:
    """A key's type: how the help shows it, and how a raw TOML value is checked."""

    shown: str
    parse: Callable[[object], object]


@dataclass(frozen=True)
class Key:
    name: str
    kind: Kind
    meaning: str
    #: "limits": a field of the profile's SessionLimits rather than of the profile.
    target: str = ""
    #: A path: a relative one is taken from the config file's folder.
    path: bool = False


def _text() -> Kind:
    def parse(value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            raise Invalid("must be a non-empty string")
        return value

    return Kind("string", parse)


def _integer(minimum: int, *, unlimited: bool = False) -> Kind:
    def parse(value: object) -> object:
        if unlimited and value == UNLIMITED:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            also = f' or "{UNLIMITED}"' if unlimited else ""
            raise Invalid(f"must be an integer ≥ {minimum}{also}")
        return value

    return Kind(f"integer ≥ {minimum}" + (f' or "{UNLIMITED}"' if unlimited else ""), parse)


def _number(*, unlimited: bool = False) -> Kind:
    def parse(value: object) -> object:
        if unlimited and value == UNLIMITED:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            also = f' or "{UNLIMITED}"' if unlimited else ""
            raise Invalid(f"must be a positive number{also}")
        return float(value)

    return Kind("positive number" + (f' or "{UNLIMITED}"' if unlimited else ""), parse)


def _boolean() -> Kind:
    def parse(value: object) -> object:
        if not isinstance(value, bool):
            raise Invalid("must be true or false (no quotes)")
        return value

    return Kind("true or false", parse)


def _choice(*options: str) -> Kind:
    shown = " or ".join(f'"{o}"' for o in options)

    def parse(value: object) -> object:
        if value not in options:
            raise Invalid(f"must be {shown}")
        return value

    return Kind(shown, parse)


def _names(what: str) -> Kind:
    def parse(value: object) -> object:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise Invalid(f'must be a non-empty list of {what} names, like ["rlm"]')
        if len(set(value)) != len(value):
            raise Invalid(f"names a {what} twice")
        return tuple(value)

    return Kind(f"list of {what} names", parse)


def _sha256() -> Kind:
    def parse(value: object) -> object:
        if not isinstance(value, str) or not _SHA256.fullmatch(value.strip().lower()):
            raise Invalid(
                'must be 64 hex digits, the SHA-256 of the token: printf %s "$TOKEN" | sha256sum'
            )
        return value.strip().lower()

    return Kind("hex SHA-256", parse)


def _database() -> Kind:
    def parse(value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            raise Invalid("must be a SQLite file path or a postgresql:// URL")
        scheme = value.split("://", 1)[0] if "://" in value else None
        if scheme is not None and scheme not in ("postgresql", "postgres"):
            raise Invalid(
                f"{scheme}:// is not supported: give a SQLite file path or a postgresql:// URL"
            )
        return value

    return Kind("SQLite path or postgresql:// URL", parse)


def _prices() -> Kind:
    def parse(value: object) -> object:
        if not isinstance(value, dict):
            raise Invalid('must be a table like { "gpt-4.1" = [2.0, 8.0] }')
        try:
            return parse_prices(value)
        except ConfigurationError as exc:
            raise Invalid(str(exc)) from None

    return Kind("table: model = [input, output]", parse)


def _engine_url() -> Kind:
    schemes = ("unix", "tcp", "http", "https")

    def parse(value: object) -> object:
        if not isinstance(value, str) or value.split("://", 1)[0] not in schemes:
            raise Invalid(
                "must be a Docker engine URL: " + ", ".join(f"{s}://..." for s in schemes)
            )
        return value

    return Kind("Docker engine URL", parse)


SERVER_KEYS: tuple[Key, ...] = (
    Key(
        "database",
        _database(),
        "Where runs, events and usage are stored: a SQLite file (WAL; a relative path is "
        "taken from the config file's folder), or a postgresql://user@host/db URL that "
        "several replicas share.",
    ),
    Key(
        "metrics_token_sha256",
        _sha256(),
        "When set, GET /metrics needs `Authorization: Bearer <token>` with this token's "
        "SHA-256; unset, /metrics is open to anyone who can reach the port.",
    ),
    Key(
        "allow_unsafe_restricted",
        _boolean(),
        'Lets profiles use backend = "restricted", which runs model code inside the '
        "server process with RestrictedPython, not in a container. Unsafe for tenants "
        "you do not trust.",
    ),
    Key("max_body_bytes", _integer(1), "The largest request body accepted (413 above it)."),
    Key("pool_size", _integer(0), "Warm Docker containers kept ready for new runs."),
    Key(
        "max_concurrent_sub_calls",
        _integer(1),
        "Sub-calls in flight at once across all tenants (the shared batcher's limit; "
        "tenants get fair shares of it).",
    ),
    Key(
        "max_concurrent_runs",
        _integer(1, unlimited=True),
        "Runs going at once on this replica, over all tenants; more wait as queued, and "
        "each free slot goes to the waiting tenant with the fewest runs going, so one "
        "tenant's flood cannot take the server. Default: 3 per CPU core.",
    ),
    Key(
        "replica_id",
        _text(),
        "This replica's name in the database: it owns the runs it starts, and at start "
        "marks its own leftover runs interrupted. Default: <hostname>:<pid>. Give each "
        "replica a stable, distinct one.",
    ),
    Key(
        "replica_timeout_s",
        _number(),
        "Replicas store a heartbeat every sixth of this; one silent for this long is "
        "taken for dead (its host crashed or lost the database), and another replica "
        "marks its runs in flight interrupted.",
    ),
    Key(
        "auth_failures_per_minute",
        _integer(1, unlimited=True),
        "Failed bearer tokens one client address may send in 60 s; past it every "
        "request from that address with an Authorization header, a right token too, "
        "gets 429 with Retry-After until the window frees.",
    ),
    Key(
        "trusted_proxy",
        _text(),
        "The address of the reverse proxy in front (e.g. Caddy on 127.0.0.1): only its "
        "requests are counted by their last X-Forwarded-For entry. Unset, the direct "
        "peer's address counts, so behind a proxy all clients share one limit.",
    ),
    Key(
        "body_timeout_s",
        _number(),
        "Seconds a request body may pause between chunks (and 4x this for all of it) "
        "before the request gets 408 and its connection closes: slow bodies hold nothing.",
    ),
)

#: Keys of a profile that are SessionLimits fields (rlm/limits.py).
_LIMIT_KEYS: tuple[Key, ...] = (
    Key(
        "max_sub_calls",
        _integer(0, unlimited=True),
        "Sub-calls a run may make, its children's included.",
        target="limits",
    ),
    Key(
        "max_tokens",
        _integer(0, unlimited=True),
        "Tokens a run may spend (root, children and sub-calls).",
        target="limits",
    ),
    Key(
        "max_cost_usd",
        _number(unlimited=True),
        "US dollars a run may spend; needs a price for each model (`prices`, or RLM_PRICES).",
        target="limits",
    ),
    Key(
        "max_wall_time_s",
        _number(unlimited=True),
        "Seconds a run may take before it is asked for its final answer (the tenant's "
        "max_wall_time_s also applies; the lower wins).",
        target="limits",
    ),
    Key(
        "max_children",
        _integer(0, unlimited=True),
        "Child RLMs a run may start (with max_depth > 1).",
        target="limits",
    ),
    Key(
        "max_live_children",
        _integer(1),
        "Child sandboxes alive at once in one run.",
        target="limits",
    ),
    Key(
        "max_consecutive_errors",
        _integer(1, unlimited=True),
        "Cells in a row that may fail before the run is stopped.",
        target="limits",
    ),
    Key(
        "max_concurrent",
        _integer(1),
        "Sub-calls in flight at once for one run.",
        target="limits",
    ),
    Key("max_prompt_chars", _integer(1), "Characters of one sub-call prompt.", target="limits"),
    Key("max_batch_size", _integer(1), "Prompts in one llm_batch.", target="limits"),
    Key(
        "allowed_models",
        _names("model"),
        "Models that model code may name in llm_query(..., model=...) besides the sub model.",
        target="limits",
    ),
)

PROFILE_KEYS: tuple[Key, ...] = (
    Key("model", _text(), "The root model (required)."),
    Key("sub_model", _text(), "The model sub-calls use. Default: the root model."),
    Key(
        "backend",
        _choice("docker", "restricted"),
        "Where model code runs: a hardened container per run, or (only with [server] "
        "allow_unsafe_restricted = true) RestrictedPython inside the server.",
    ),
    Key(
        "runtime",
        _choice("runc", "runsc"),
        "The Docker runtime: runsc runs each sandbox under gVisor (registered with the engine).",
    ),
    Key("max_depth", _integer(1), "Levels of runs: 1 is the root alone, 2 allows child RLMs."),
    Key("child_model", _text(), "The child RLMs' root model. Default: the sub model."),
    Key("max_iterations", _integer(1), "Root-model turns per run. Default: rlm's (20)."),
    *_LIMIT_KEYS,
    Key("image", _text(), "The sandbox image. Default: rlm's (RLM_IMAGE)."),
    Key("docker_memory", _text(), "A sandbox's memory, like \"2g\". Default: rlm's."),
    Key("docker_cpus", _number(), "A sandbox's CPUs. Default: rlm's."),
    Key("cell_timeout", _number(), "Seconds one code cell may run. Default: rlm's."),
    Key(
        "prices",
        _prices(),
        "US dollars per million input and output tokens per model, for max_cost_usd and "
        "usage reports; added to RLM_PRICES.",
    ),
)

TENANT_KEYS: tuple[Key, ...] = (
    Key("name", _text(), "The tenant's name (required, unique): letters, digits, . _ -"),
    Key(
        "token_sha256",
        _sha256(),
        "The SHA-256 (hex) of the tenant's bearer token (required, unique). The token "
        'itself is never written anywhere: printf %s "$TOKEN" | sha256sum',
    ),
    Key("profiles", _names("profile"), "The profiles this tenant may use (required)."),
    Key(
        "max_concurrent_runs",
        _integer(1),
        "Runs in flight at once; one more is refused with 429 and Retry-After.",
    ),
    Key(
        "runs_per_minute",
        _integer(1, unlimited=True),
        "Runs started in any 60 seconds; more are refused with 429 and Retry-After.",
    ),
    Key(
        "tokens_per_day",
        _integer(0, unlimited=True),
        "Tokens spent per UTC day; past it, runs are refused with 429 until midnight UTC.",
    ),
    Key(
        "max_context_bytes",
        _integer(0),
        "The largest context one run may take; larger is refused with 413.",
    ),
    Key(
        "max_wall_time_s",
        _number(unlimited=True),
        "Seconds one run may take (the profile's max_wall_time_s also applies).",
    ),
)

ENGINE_KEYS: tuple[Key, ...] = (
    Key("url", _engine_url(), "The engine's URL (required), like tcp://10.0.0.5:2376."),
    Key("ca_cert", _text(), "TLS: the CA certificate that signed the engine's.", path=True),
    Key("client_cert", _text(), "TLS: this service's client certificate.", path=True),
    Key("client_key", _text(), "TLS: the client certificate's key.", path=True),
    Key(
        "max_sandboxes",
        _integer(1, unlimited=True),
        "Sandboxes placed on this engine at once (by this replica); when every "
        "healthy engine is full, a run waits up to a minute for room.",
    ),
    Key(
        "insecure_plaintext",
        _boolean(),
        "Allow a tcp:// engine without TLS. Refused otherwise: a plain-TCP Docker API "
        "is root on that machine for anyone who can reach its port.",
    ),
)

#: Section as the help shows it → (its keys, the dataclass they fill).
SECTIONS: dict[str, tuple[tuple[Key, ...], type]] = {
    "[server]": (SERVER_KEYS, ServerSettings),
    "[profiles.NAME]": (PROFILE_KEYS, Profile),
    "[[tenants]]": (TENANT_KEYS, Tenant),
    "[[engines]]": (ENGINE_KEYS, Engine),
}


def _default(owner: type, key: Key) -> object:
    """A key's default, read from the field it fills; MISSING when it is required."""
    target = SessionLimits if key.target == "limits" else owner
    for f in fields(target):
        if f.name == key.name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            return MISSING
    raise AssertionError(f"{key.name} is not a field of {target.__name__}")


def _shown_default(owner: type, key: Key) -> str | None:
    """The default as the help shows it; None for a required key."""
    if owner is ServerSettings and key.name == "replica_id":
        return "<hostname>:<pid>"
    if owner is ServerSettings and key.name == "max_concurrent_runs":
        return "3 per CPU core"
    value = _default(owner, key)
    if value is MISSING:
        return None
    if value is None:
        return UNLIMITED if UNLIMITED in key.kind.shown else "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Mapping) and not value:
        return "{}"
    return str(value)


def _help() -> str:
    lines = [
        "The config file is TOML. Every key is listed here; any other key is an error.",
        "The provider's key and URL come from OPENAI_API_KEY / OPENAI_BASE_URL (or .env),",
        "never from this file. Example:",
        "",
        "  [server]",
        '  database = "rlm.db"',
        "",
        "  [profiles.rlm]",
        '  model = "gpt-4.1"',
        '  sub_model = "gpt-4.1-mini"',
        '  backend = "docker"',
        "",
        "  [[tenants]]",
        '  name = "acme"',
        '  token_sha256 = "<hex SHA-256 of the tenant\'s bearer token>"',
        '  # printf %s "$TOKEN" | sha256sum   (the token itself is never written down)',
        '  profiles = ["rlm"]',
        "  max_concurrent_runs = 4",
    ]
    titles = {
        "[server]": "settings of the whole service (optional)",
        "[profiles.NAME]": "a model name clients ask for (at least one)",
        "[[tenants]]": "who may call, with what, and how much (at least one)",
        "[[engines]]": "Docker engines to place sandboxes on, least loaded first "
        "(optional; default: DOCKER_HOST or the local engine)",
    }
    for section, (keys, owner) in SECTIONS.items():
        lines += ["", *textwrap.wrap(f"{section}  {titles[section]}", width=90)]
        for key in keys:
            default = _shown_default(owner, key)
            shown = "required" if default is None else f"default {default}"
            lines.append(f"  {key.name}: {key.kind.shown}; {shown}")
            lines += textwrap.wrap(
                key.meaning, width=86, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
    return "\n".join(lines) + "\n"


CONFIG_HELP: str = _help()
