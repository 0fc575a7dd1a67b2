"""The contexts `rlm run` reads: a file in an encoding, a folder, stdin, JSON; and
the one-line errors for what it cannot read. The reader in-process, then the CLI as
a process against the offline model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from rlm.context_input import (
    DEFAULT_MAX_BYTES,
    ContextInputError,
    ContextOptions,
    parse_size,
    read_context,
    read_context_json,
)
from rlm.testing import OfflineModelServer
from tests.cli_support import assert_one_line_error, model_env, rlm

UTF8 = ContextOptions()


def read(source: str | Path, options: ContextOptions = UTF8, stdin: bytes = b"") -> object:
    warnings: list[str] = []
    value = read_context(str(source), options, stdin=io.BytesIO(stdin), warn=warnings.append)
    assert not warnings, warnings
    return value


# -- a file -----------------------------------------------------------------------------


def test_a_file_is_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("naïve ☃ text\n", encoding="utf-8")
    assert read(path) == "naïve ☃ text\n"


def test_another_encoding_is_named_with_context_encoding(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes("café\n".encode("latin-1"))
    assert read(path, ContextOptions(encoding="latin-1")) == "café\n"
    utf16 = tmp_path / "u16.txt"
    utf16.write_text("wide text", encoding="utf-16")
    assert read(utf16, ContextOptions(encoding="utf-16")) == "wide text"


def test_an_undecodable_file_names_the_option_and_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"hello " + "café".encode("latin-1"))
    with pytest.raises(ContextInputError) as caught:
        read(path)
    message = str(caught.value)
    assert f"--context {path} is not utf-8 text: byte 0xe9 at offset 9" in message
    assert "--context-encoding" in message and "\n" not in message


def test_a_binary_file_is_refused_by_its_nul_byte(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(ContextInputError, match=r"looks binary \(a NUL byte at offset 4\)"):
        read(path)


def test_an_unknown_encoding_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("x")
    with pytest.raises(ContextInputError, match="--context-encoding 'klingon' is not an"):
        read(path, ContextOptions(encoding="klingon"))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ContextInputError, match=r"--context .*nope\.txt: No such file"):
        read(tmp_path / "nope.txt")


def test_a_file_over_the_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("x" * 2048)
    with pytest.raises(ContextInputError, match=r"is 2.0 KiB, over the limit of 1.0 KiB"):
        read(path, ContextOptions(max_bytes=1024))
    assert read(path, ContextOptions(max_bytes=2048)) == "x" * 2048


def test_a_json_file_given_to_context_is_still_read_as_json(tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    path.write_text('["a", "b"]')
    assert read(path) == ["a", "b"]


# -- stdin ------------------------------------------------------------------------------


def test_stdin_is_read_as_text_with_the_same_rules() -> None:
    assert read("-", stdin="from a pipe ☃".encode()) == "from a pipe ☃"
    with pytest.raises(ContextInputError, match="--context - is not utf-8 text: byte 0xff"):
        read("-", stdin=b"ok\xff")
    with pytest.raises(ContextInputError, match="over the limit of 10 bytes"):
        read("-", ContextOptions(max_bytes=10), stdin=b"x" * 11)


# -- a folder ---------------------------------------------------------------------------


def test_a_folder_is_a_dict_of_relative_path_to_text(tmp_path: Path) -> None:
    (tmp_path / "docs" / "deep").mkdir(parents=True)
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "docs" / "b.md").write_text("beta")
    (tmp_path / "docs" / "deep" / "c.json").write_text('{"not": "parsed"}')
    assert read(tmp_path) == {
        "a.txt": "alpha",
        "docs/b.md": "beta",
        "docs/deep/c.json": '{"not": "parsed"}',
    }


def test_a_folder_skips_binary_files_and_says_how_many(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    warnings: list[str] = []
    value = read_context(str(tmp_path), UTF8, stdin=io.BytesIO(), warn=warnings.append)
    assert value == {"notes.txt": "keep me"}
    assert len(warnings) == 1
    assert "skipped 2 binary file(s)" in warnings[0] and "image.png" in warnings[0]


def test_a_folder_over_the_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text("y" * 400)
    with pytest.raises(ContextInputError, match=r"\(a folder\) is over 1.2 KiB, over the limit"):
        read(tmp_path, ContextOptions(max_bytes=1024))


def test_a_folder_with_no_text_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"\x00\x01")
    with pytest.raises(ContextInputError, match=r"has no utf-8 text files \(1 binary"):
        read_context(str(tmp_path), UTF8, stdin=io.BytesIO(), warn=lambda _line: None)


# -- JSON -------------------------------------------------------------------------------


def test_json_from_a_file_or_stdin(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text('{"users": [1, 2]}')
    assert read_context_json(str(path), UTF8, stdin=io.BytesIO()) == {"users": [1, 2]}
    assert read_context_json("-", UTF8, stdin=io.BytesIO(b'["x"]')) == ["x"]
    utf16 = json.dumps(["wide"]).encode("utf-16")
    assert read_context_json("-", UTF8, stdin=io.BytesIO(utf16)) == ["wide"]


def test_a_json_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "a": 1,\n  "b": oops\n}')
    with pytest.raises(ContextInputError) as caught:
        read_context_json(str(path), UTF8, stdin=io.BytesIO())
    assert str(caught.value) == (
        f"--context-json {path} is not valid JSON: Expecting value at line 3, column 8"
    )


def test_a_json_number_is_not_a_context() -> None:
    with pytest.raises(ContextInputError, match="holds a JSON int; a context is a JSON list"):
        read_context_json("-", UTF8, stdin=io.BytesIO(b"42"))


def test_sizes_are_read_with_units() -> None:
    assert parse_size("1G") == DEFAULT_MAX_BYTES == parse_size("1GiB") == parse_size("1073741824")
    assert parse_size("512M") == 512 << 20 and parse_size("64k") == 64 << 10
    for bad in ("lots", "0", "-1M"):
        with pytest.raises(ValueError):
            parse_size(bad)


# -- the command line -------------------------------------------------------------------

#: A root model that answers with what the sandbox holds as `context`, so a test sees
#: exactly the value the CLI read.
ECHO_CONTEXT = [
    "```repl\nimport json\nshown = json.dumps(context, sort_keys=True)\n```\nFINAL_VAR(shown)"
]


def run_echo(*args: str, stdin: bytes | None = None) -> tuple[int, object, str]:
    with OfflineModelServer(root_script=ECHO_CONTEXT) as server:
        proc = rlm(
            "run",
            *args,
            "--query",
            "q",
            "--backend",
            "restricted",
            "--json",
            env=model_env(server),
            stdin=stdin,
        )
    answer = json.loads(json.loads(proc.stdout)["answer"]) if proc.returncode == 0 else None
    return proc.returncode, answer, proc.stderr


def test_cli_reads_a_folder_and_says_what_it_skipped(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("the code is 7")
    (tmp_path / "blob.bin").write_bytes(b"\x00\xff")
    code, answer, err = run_echo("--context", str(tmp_path))
    assert code == 0, err
    assert answer == {"sub/a.txt": "the code is 7"}
    assert "skipped 1 binary file(s)" in err and "blob.bin" in err


def test_cli_reads_stdin_in_an_encoding_and_json_from_stdin() -> None:
    code, answer, err = run_echo(
        "--context", "-", "--context-encoding", "cp1252", stdin="€ café".encode("cp1252")
    )
    assert (code, answer) == (0, "€ café"), err
    code, answer, err = run_echo("--context-json", "-", stdin=b'{"k": [1, "two"]}')
    assert (code, answer) == (0, {"k": [1, "two"]}), err


def test_cli_binary_file_is_one_line_naming_the_option_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 JFIF")
    proc = rlm("run", "--context", str(path), "--query", "q", "--model", "m")
    line = assert_one_line_error(proc, "--context", "offset 0", "--context-encoding", code=2)
    assert str(path) in line


def test_cli_json_error_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("[1,\n 2,,]")
    proc = rlm("run", "--context-json", str(path), "--query", "q", "--model", "m", "--json")
    assert_one_line_error(proc, "--context-json", "line 2, column 4", code=2)
    assert json.loads(proc.stdout)["status"] == "config_error"


def test_cli_size_bound_and_exactly_one_context(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("z" * 5000)
    proc = rlm("run", "--context", str(path), "--context-max-bytes", "1K", "--query", "q")
    assert_one_line_error(proc, "over the limit of 1.0 KiB", "--context-max-bytes", code=2)
    both = rlm("run", "--context", str(path), "--context-json", str(path), "--query", "q")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    neither = rlm("run", "--query", "q")
    assert neither.returncode == 2 and "one of the arguments" in neither.stderr


def test_a_utf8_byte_order_mark_is_not_content(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfstarts clean")
    assert read(path) == "starts clean"
