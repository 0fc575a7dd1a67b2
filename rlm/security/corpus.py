"""The attack corpus: payloads as data, one TOML file per category.

A corpus file looks like::

    category = "network"
    description = "..."

    prelude = '''...'''         # optional: code put before every payload's code

    [defaults]                 # merged into every payload of the file
    backends = "both"

    [[payload]]
    id = "net-tcp-loopback"
    group = "loopback"
    title = "connect to the harness's listener on 127.0.0.1"
    outcome = "contained"
    docker.stdout_has = ["unreachable"]
    code = '''
    ...
    '''

``backends`` says where a payload applies: ``restricted``, ``docker`` or ``both``.
The expectation fields (see :class:`Expectation`) may be overridden per backend in
a sub-table named ``restricted``, ``docker``, ``runc`` or ``runsc`` (the runtime
tables override ``docker``). Code may use placeholders the harness fills in:
``@PORT@``, ``@PORT6@``, ``@UDP_PORT@``, ``@HOST_DIR@``, ``@HOST_FILE@``,
``@HOST_WRITE@``, ``@UNIX_SOCKET@``, ``@ENV_NAME@``, ``@VICTIM_SESSION@``,
``@VICTIM_TENANT@``, ``@MARKER@``, ``@MODEL_PORT@`` (the model server's port),
``@HOST_PID@`` (the host process's pid).

A payload signals that it got somewhere it must not by printing the marker
(``ESCAPED`` by default); independently of that, the harness checks the canary
secret, the listener, the host files and the victim session after every payload.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

#: What a payload prints when its attack worked (the harness also looks for the canary).
MARKER = "ESCAPED"

OUTCOMES = ("contained", "ok", "error", "timeout", "limited")
BACKENDS = ("restricted", "docker", "both")
#: Sub-tables that override a payload's expectation for one backend kind.
OVERRIDE_TABLES = ("restricted", "docker", "runc", "runsc")

_ID = re.compile(r"^[a-z0-9][a-z0-9.-]{2,80}$")
_PLACEHOLDER = re.compile(r"@[A-Z0-9_]+@")
PLACEHOLDERS = frozenset(
    {
        "@PORT@",
        "@PORT6@",
        "@UDP_PORT@",
        "@HOST_DIR@",
        "@HOST_FILE@",
        "@HOST_WRITE@",
        "@UNIX_SOCKET@",
        "@ENV_NAME@",
        "@VICTIM_SESSION@",
        "@VICTIM_TENANT@",
        "@MARKER@",
        "@MODEL_PORT@",
        "@HOST_PID@",
    }
)


class CorpusError(ValueError):
    """A corpus file is malformed; the message names the file and the payload."""


@dataclass(frozen=True)
class Expectation:
    """The outcome a payload must have on one backend.

    ``outcome`` is one of:

    - ``contained``: anything may happen to the cell, but no marker, no canary,
      no connection, no host write, no harm to other sessions;
    - ``ok``: contained, and the cell ran to its end without an error;
    - ``error``: contained, and the cell ended with an error (not a timeout);
    - ``timeout``: contained, and the cell was stopped by its timeout;
    - ``limited``: contained, and the cell was stopped by some limit (an error,
      the timeout, or a restart) with a non-empty message saying why.

    Every outcome also requires the cell to finish within its timeout plus the
    harness's grace period.
    """

    outcome: str = "contained"
    error_match: str | None = None
    stdout_has: tuple[str, ...] = ()
    stdout_lacks: tuple[str, ...] = ()
    forbid: tuple[str, ...] = (MARKER,)
    max_stdout: int | None = None
    truncated: bool | None = None
    #: The backend must report the sandbox's state as lost (a restart happened).
    state_lost: bool | None = None
    #: At most this much work admitted across the run's tree: sub-calls, children
    #: and tool calls (0 for a payload whose every request must be refused).
    max_admitted: int | None = None


_EXPECTATION_FIELDS = {f.name for f in fields(Expectation)}
_TUPLE_FIELDS = {"stdout_has", "stdout_lacks", "forbid"}


@dataclass(frozen=True)
class Payload:
    """One attack and what it must come to."""

    id: str
    category: str
    code: str
    backends: str = "both"
    group: str = ""
    title: str = ""
    refs: tuple[str, ...] = ()
    #: Seconds the cell gets; the harness allows its grace period on top.
    timeout: float = 5.0
    #: Run in a fresh sandbox and throw it away afterwards (destructive payloads).
    isolate: bool = False
    #: Variables whose values the harness reads back and checks for the canary.
    variables: tuple[str, ...] = ("loot",)
    #: Under an unguarded interpreter this payload must fail its checks: it is live.
    naked: bool = False
    expect: Expectation = field(default_factory=Expectation)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def applies_to(self, kind: str) -> bool:
        """Whether the payload runs on backend ``kind`` (``restricted`` or ``docker``)."""
        return self.backends in ("both", kind)

    def expectation(self, kind: str, runtime: str | None = None) -> Expectation:
        """The expectation on backend ``kind`` (and Docker ``runtime``)."""
        expect = self.expect
        for table in (kind, runtime):
            if table and table in self.overrides:
                expect = replace(expect, **self.overrides[table])
        return expect

    def render(self, values: dict[str, str]) -> str:
        """The code with its placeholders filled in."""
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), self.code)


def _expectation_fields(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _EXPECTATION_FIELDS:
            raise CorpusError(f"{where}: unknown expectation field {key!r}")
        if key in _TUPLE_FIELDS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CorpusError(f"{where}: {key} must be a list of strings")
            value = tuple(value)
        out[key] = value
    if "outcome" in out and out["outcome"] not in OUTCOMES:
        raise CorpusError(f"{where}: outcome must be one of {', '.join(OUTCOMES)}")
    if out.get("error_match") is not None:
        try:
            re.compile(out["error_match"])
        except re.error as exc:
            raise CorpusError(f"{where}: error_match is not a valid regex ({exc})") from None
    return out


def _merge(defaults: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in entry.items():
        if key in OVERRIDE_TABLES and isinstance(value, dict):
            merged[key] = {**defaults.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def _payload(category: str, raw: dict[str, Any], where: str) -> Payload:
    pid = raw.get("id")
    if not isinstance(pid, str) or not _ID.match(pid):
        raise CorpusError(f"{where}: payload id {pid!r} must match {_ID.pattern}")
    where = f"{where} [{pid}]"
    code = raw.get("code")
    if not isinstance(code, str) or not code.strip():
        raise CorpusError(f"{where}: code is missing")
    unknown = sorted(set(_PLACEHOLDER.findall(code)) - PLACEHOLDERS)
    if unknown:
        raise CorpusError(f"{where}: unknown placeholders {unknown}")
    backends = raw.get("backends", "both")
    if backends not in BACKENDS:
        raise CorpusError(f"{where}: backends must be one of {', '.join(BACKENDS)}")
    expect_raw = {k: v for k, v in raw.items() if k in _EXPECTATION_FIELDS}
    expect = Expectation(**_expectation_fields(expect_raw, where))
    overrides = {
        table: _expectation_fields(raw[table], f"{where} {table}")
        for table in OVERRIDE_TABLES
        if table in raw
    }
    known = (
        {"id", "code", "backends", "group", "title", "refs", "timeout", "isolate"}
        | {"variables", "naked", "category"}
        | _EXPECTATION_FIELDS
        | set(OVERRIDE_TABLES)
    )
    extra = sorted(set(raw) - known)
    if extra:
        raise CorpusError(f"{where}: unknown fields {extra}")
    timeout = raw.get("timeout", 5.0)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise CorpusError(f"{where}: timeout must be a positive number")
    return Payload(
        id=pid,
        category=category,
        code=code,
        backends=backends,
        group=str(raw.get("group", "")),
        title=str(raw.get("title", "")),
        refs=tuple(raw.get("refs", ())),
        timeout=float(timeout),
        isolate=bool(raw.get("isolate", False)),
        variables=tuple(raw.get("variables", ("loot",))),
        naked=bool(raw.get("naked", False)),
        expect=expect,
        overrides=overrides,
    )


def parse_corpus_file(text: str, where: str = "<corpus>") -> list[Payload]:
    """The payloads of one corpus file's text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CorpusError(f"{where}: not valid TOML ({exc})") from None
    category = data.get("category")
    if not isinstance(category, str) or not category:
        raise CorpusError(f"{where}: the file must set category")
    defaults = data.get("defaults", {})
    entries = data.get("payload", [])
    if not isinstance(entries, list) or not entries:
        raise CorpusError(f"{where}: no [[payload]] entries")
    prelude = data.get("prelude", "")
    if not isinstance(prelude, str):
        raise CorpusError(f"{where}: prelude must be a string of code")
    payloads = [_payload(category, _merge(defaults, e), where) for e in entries]
    if prelude.strip():
        payloads = [replace(p, code=prelude.rstrip("\n") + "\n" + p.code) for p in payloads]
    return payloads


def corpus_files() -> list[Path]:
    """The corpus files shipped with rlm, in a stable order."""
    root = resources.files("rlm.security") / "corpus"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml"))


def load_corpus(
    paths: list[Path] | None = None, *, categories: list[str] | None = None
) -> list[Payload]:
    """Every payload (of ``categories``, if given), checked for unique ids."""
    payloads: list[Payload] = []
    for path in paths if paths is not None else corpus_files():
        payloads.extend(parse_corpus_file(path.read_text(encoding="utf-8"), path.name))
    seen: set[str] = set()
    for p in payloads:
        if p.id in seen:
            raise CorpusError(f"payload id {p.id!r} is used twice")
        seen.add(p.id)
    if categories:
        known = {p.category for p in payloads}
        unknown = sorted(set(categories) - known)
        if unknown:
            raise CorpusError(
                f"unknown categories {unknown}; the corpus has {', '.join(sorted(known))}"
            )
        payloads = [p for p in payloads if p.category in categories]
    return payloads
