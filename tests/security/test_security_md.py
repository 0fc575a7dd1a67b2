"""SECURITY.md backs every claim with a test: each test and payload it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from rlm.security import load_corpus

ROOT = Path(__file__).resolve().parents[2]
SECURITY_MD = ROOT / "SECURITY.md"

_REF = re.compile(r"(tests/[\w/]+\.py)?(?:::(test_\w+))?")
_PAYLOAD = re.compile(r"`((?:esc|sec|res|br|net|host|rec|st|tool)-[a-z0-9.-]+)(\*)?`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
    }


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test) for every citation; a bare ``::test`` belongs to the last file named."""
    cited: list[tuple[str, str]] = []
    current = ""
    for match in _REF.finditer(text):
        current = match.group(1) or current
        if match.group(2):
            assert current, f"{match.group(0)} names no file before it"
            cited.append((current, match.group(2)))
    return cited


def test_every_cited_test_exists() -> None:
    cited = cited_tests(SECURITY_MD.read_text())
    assert len(cited) >= 50
    missing = []
    for file, name in cited:
        path = ROOT / file
        if not path.exists() or name not in _tests_in(path):
            missing.append(f"{file}::{name}")
    assert not missing, missing


def test_every_cited_payload_exists() -> None:
    ids = {p.id for p in load_corpus()}
    cited = _PAYLOAD.findall(SECURITY_MD.read_text())
    assert len(cited) >= 10
    for pid, wildcard in cited:
        if wildcard:
            assert any(i.startswith(pid) for i in ids), pid
        else:
            assert pid in ids, pid


def test_the_check_catches_a_missing_test() -> None:
    text = (
        "see `tests/security/test_corpus_data.py::test_the_corpus_covers_every_class`; "
        "`tests/security/test_corpus.py` runs it: `::test_every_payload_ran`, `::test_nope`"
    )
    cited = cited_tests(text)
    assert cited == [
        ("tests/security/test_corpus_data.py", "test_the_corpus_covers_every_class"),
        ("tests/security/test_corpus.py", "test_every_payload_ran"),
        ("tests/security/test_corpus.py", "test_nope"),
    ]
    assert "test_nope" not in _tests_in(ROOT / cited[1][0])
