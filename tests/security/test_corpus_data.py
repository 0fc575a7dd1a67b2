"""The corpus as data: enough payloads of every class, well-formed, loopback-only."""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from rlm.security import CorpusError, Payload, load_corpus
from rlm.security.corpus import corpus_files, parse_corpus_file

ROOT = Path(__file__).resolve().parents[2]

#: Each class the threat model names, with the least number of payloads it must have.
CLASSES = {
    "escape": 80,
    "secrets": 15,
    "resources": 30,
    "bridge": 30,
    "network": 15,
    "host": 15,
    "recursion": 15,
    "streams": 8,
    "tools": 15,
}


def test_the_corpus_covers_every_class() -> None:
    payloads = load_corpus()
    assert len(payloads) >= 150
    counts = Counter(p.category for p in payloads)
    for category, least in CLASSES.items():
        assert counts[category] >= least, counts
    assert set(counts) == set(CLASSES)


def test_the_published_restricted_python_escapes_are_in_the_corpus() -> None:
    refs = {ref for p in load_corpus(categories=["escape"]) for ref in p.refs}
    for cve in ("CVE-2023-37271", "CVE-2023-41039", "CVE-2024-47532", "CVE-2025-22153"):
        assert cve in refs


@pytest.mark.parametrize(
    "group",
    ["frames", "subclasses", "format", "builtins", "imports", "decorators", "trystar"],
)
def test_each_escape_technique_has_payloads(group: str) -> None:
    assert len([p for p in load_corpus(categories=["escape"]) if p.group == group]) >= 3


_IPV4 = re.compile(r"(?<![\w.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w.])")
_IPV6 = re.compile(r"[\"'](::[0-9a-fA-F:.]*|[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{0,4}){2,7})[\"']")
_DOMAIN = re.compile(
    r"\b(?:[a-z0-9-]+\.)+(?:com|net|org|io|ai|dev|app|cloud|internal|local|lan|co|uk|de)\b",
    re.IGNORECASE,
)
_ALLOWED_V6 = {"::1", "::ffff:127.0.0.1"}


def off_machine(code: str) -> list[str]:
    """Every address or name in ``code`` that is not loopback or 'localhost'."""
    found = []
    for match in _IPV4.finditer(code):
        octets = [int(x) for x in match.groups()]
        if octets == [0, 0, 0, 0] and "getaddrinfo" not in code:
            continue  # a bind address or a zeroed kernel symbol, never a destination
        if octets[0] != 127:
            found.append(match.group(0))
    found += [m.group(1) for m in _IPV6.finditer(code) if m.group(1) not in _ALLOWED_V6]
    found += [m.group(0) for m in _DOMAIN.finditer(code)]
    for pattern in (r"getaddrinfo\(\s*[\"']([^\"']+)", r"create_connection\(\(\s*[\"']([^\"']+)"):
        found += [n for n in re.findall(pattern, code) if n not in ("localhost", "127.0.0.1")]
    return found


@pytest.mark.parametrize("payload", load_corpus(), ids=lambda p: p.id)
def test_payloads_only_ever_address_loopback(payload: Payload) -> None:
    """No address off this machine, no outside name: even if a guard fails."""
    assert off_machine(payload.code) == []


def test_the_loopback_check_catches_other_addresses() -> None:
    bad = (
        'socket.create_connection(("172.17.0.1", 80))\n'
        'urlopen("http://api.openai.com/v1")\n'
        's.connect(("fe80::1", 22))\n'
        'socket.getaddrinfo("sandbox", 80)\n'
        's.connect(("10.255.255.53", 53))\n'
    )
    assert off_machine(bad) == [
        "172.17.0.1",
        "10.255.255.53",
        "fe80::1",
        "api.openai.com",
        "sandbox",
        "172.17.0.1",
    ]
    assert off_machine('s.connect(("127.0.0.1", 9)); s.connect(("::1", 9))') == []


def test_the_corpus_ships_with_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "rlm.security" in setuptools["packages"]
    assert "security/corpus/*.toml" in setuptools["package-data"]["rlm"]
    names = {p.name for p in corpus_files()}
    assert names == {f"{c}.toml" for c in CLASSES}


GOOD = """
category = "t"
[[payload]]
id = "t-ok"
code = "print(1)"
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("category = 't'\n[[payload]]\nid = 'x'\ncode = 'print(1)'", "payload id"),
        ("category = 't'\n[[payload]]\nid = 't-no-code'", "code is missing"),
        ("[[payload]]\nid = 't-a'\ncode = 'x'", "must set category"),
        ("category = 't'", "no [[payload]]"),
        (GOOD + "outcome = 'escaped'", "outcome must be one of"),
        (GOOD + "colour = 'red'", "unknown fields"),
        (GOOD + "error_match = '(unclosed'", "not a valid regex"),
        (GOOD + "backends = 'vm'", "backends must be one of"),
        (GOOD + "timeout = -1", "timeout must be a positive number"),
        (GOOD + "docker.colour = 'red'", "unknown expectation field"),
        (GOOD + "stdout_has = 'one'", "must be a list of strings"),
        (GOOD.replace("print(1)", "print('@NOPE@')"), "unknown placeholders"),
        ("category = 't'\nnot toml at all [", "not valid TOML"),
    ],
)
def test_malformed_corpus_files_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(CorpusError, match=re.escape(message)) as info:
        parse_corpus_file(text, "broken.toml")
    assert "broken.toml" in str(info.value)


def test_duplicate_ids_and_unknown_categories_are_refused(tmp_path: Path) -> None:
    one = tmp_path / "a.toml"
    one.write_text(GOOD)
    two = tmp_path / "b.toml"
    two.write_text(GOOD)
    with pytest.raises(CorpusError, match="used twice"):
        load_corpus([one, two])
    with pytest.raises(CorpusError, match="unknown categories"):
        load_corpus([one], categories=["nope"])


def test_overrides_apply_per_backend_and_runtime() -> None:
    [p] = parse_corpus_file(
        GOOD + "outcome = 'error'\ndocker.outcome = 'ok'\nrunsc.outcome = 'timeout'\n", "o.toml"
    )
    assert p.expectation("restricted").outcome == "error"
    assert p.expectation("docker", "runc").outcome == "ok"
    assert p.expectation("docker", "runsc").outcome == "timeout"
