"""Reading the context a user names on the command line: a file, a folder, stdin, JSON.

Every failure is a :class:`ContextInputError`: one line that names the option, the
path and, for bytes that do not decode, the offset, so a user can fix it without a
traceback. Sizes are checked before anything is read, so a mistaken ``--context /``
is refused at once instead of filling memory.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rlm.errors import ConfigurationError

#: The default bound on a context's bytes (``--context-max-bytes``).
DEFAULT_MAX_BYTES = 1 << 30
_READ_CHUNK = 1 << 20
_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ContextInputError(ConfigurationError):
    """The context could not be read as asked (missing, too big, binary, bad JSON)."""


@dataclass(frozen=True)
class ContextOptions:
    """How to read: the encoding (None: UTF-8, and JSON's own detection) and the bound."""

    encoding: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def codec(self) -> str:
        return self.encoding or "utf-8"


def parse_size(text: str) -> int:
    """``1073741824``, ``512M``, ``1G``, ``1GiB`` → bytes (for ``--context-max-bytes``)."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = _SIZE_SUFFIXES.get(raw[-1:], 1)
    digits = raw[:-1] if raw[-1:] in _SIZE_SUFFIXES else raw
    try:
        value = int(float(digits) * factor)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (say e.g. 1073741824, 512M or 1G)") from None
    if value < 1:
        raise ValueError(f"not a positive size: {text!r}")
    return value


def read_context(
    source: str,
    options: ContextOptions,
    *,
    stdin: IO[bytes],
    warn: Callable[[str], None],
) -> Any:
    """``--context``: a text file, a folder (a dict of relative path → text), or ``-``.

    A file ending in ``.json`` is read as JSON, as with ``--context-json`` (this was
    ``--context``'s behaviour before ``--context-json`` existed).
    """
    _check_encoding(options)
    if source == "-":
        return _decode(_read_stream(stdin, "--context", options), "--context", "-", options)
    path = Path(source)
    if path.is_dir():
        return _read_folder(path, options, warn)
    if source.endswith(".json"):
        return read_context_json(source, options, stdin=stdin, option="--context")
    return _decode(_read_file(path, "--context", options), "--context", source, options)


def read_context_json(
    source: str, options: ContextOptions, *, stdin: IO[bytes], option: str = "--context-json"
) -> Any:
    """``--context-json``: a JSON list, object or string from a file or ``-``."""
    _check_encoding(options)
    if source == "-":
        data = _read_stream(stdin, option, options)
    elif Path(source).is_dir():
        raise ContextInputError(f"{option} {source} is a folder; pass it with --context")
    else:
        data = _read_file(Path(source), option, options)
    try:
        # Without an encoding, json detects UTF-8/16/32 from the bytes themselves.
        value = json.loads(data.decode(options.encoding) if options.encoding else data)
    except UnicodeDecodeError as exc:
        raise ContextInputError(_undecodable(option, source, exc, options)) from None
    except json.JSONDecodeError as exc:
        # A .json file given to --context may be text after all: say how to read it so.
        hint = "" if option == "--context-json" else "; to read it as text, pipe it to --context -"
        raise ContextInputError(
            f"{option} {source} is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}{hint}"
        ) from None
    if not isinstance(value, (list, dict, str)):
        raise ContextInputError(
            f"{option} {source} holds a JSON {type(value).__name__}; "
            "a context is a JSON list, object or string"
        )
    return value


def _check_encoding(options: ContextOptions) -> None:
    if options.encoding is None:
        return
    try:
        codecs.lookup(options.encoding)
    except LookupError:
        raise ContextInputError(
            f"--context-encoding {options.encoding!r} is not an encoding Python knows "
            "(e.g. utf-8, latin-1, cp1252, utf-16)"
        ) from None


def _too_big(option: str, source: str, size: str, options: ContextOptions) -> ContextInputError:
    return ContextInputError(
        f"{option} {source} is {size}, over the limit of {_human(options.max_bytes)}; "
        "raise it with --context-max-bytes (e.g. 4G) if this is really the context"
    )


def _read_file(path: Path, option: str, options: ContextOptions) -> bytes:
    try:
        size = path.stat().st_size
        if size > options.max_bytes:
            raise _too_big(option, str(path), _human(size), options)
        return path.read_bytes()
    except OSError as exc:
        raise ContextInputError(f"{option} {path}: {exc.strerror or exc}") from None


def _read_stream(stream: IO[bytes], option: str, options: ContextOptions) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while chunk := stream.read(_READ_CHUNK):
        chunks.append(chunk)
        total += len(chunk)
        if total > options.max_bytes:
            raise _too_big(option, "- (stdin)", f"over {_human(total)}", options)
    return b"".join(chunks)


def _decode(data: bytes, option: str, source: str, options: ContextOptions) -> str:
    nul = data.find(b"\0") if _nul_means_binary(options) else -1
    if nul >= 0:
        raise ContextInputError(
            f"{option} {source} looks binary (a NUL byte at offset {nul:,}); a context "
            "is text: pass text, JSON with --context-json, or name the text's encoding "
            "with --context-encoding"
        )
    try:
        text = data.decode(options.codec)
    except UnicodeDecodeError as exc:
        raise ContextInputError(_undecodable(option, source, exc, options)) from None
    # Editors on Windows start UTF-8 files with a byte-order mark; it is not content.
    return text.removeprefix("\ufeff") if options.encoding is None else text


def _undecodable(option: str, source: str, exc: UnicodeDecodeError, options: ContextOptions) -> str:
    byte = exc.object[exc.start : exc.start + 1].hex()
    return (
        f"{option} {source} is not {options.codec} text: byte 0x{byte} at offset "
        f"{exc.start:,} cannot be decoded; name its encoding with --context-encoding "
        "(e.g. latin-1) if it is text"
    )


def _nul_means_binary(options: ContextOptions) -> bool:
    # A NUL is ordinary in UTF-16/32 text, and a sign of binary data in any other.
    return not codecs.lookup(options.codec).name.startswith(("utf-16", "utf-32"))


def _read_folder(
    folder: Path, options: ContextOptions, warn: Callable[[str], None]
) -> dict[str, str]:
    files: list[tuple[str, Path]] = []
    total = 0
    # Symlinked folders are not followed: they could loop, or lead out of the folder.
    for root, dirs, names in os.walk(folder, onerror=_raise_walk_error):
        dirs.sort()
        for name in sorted(names):
            path = Path(root, name)
            if not path.is_file():
                continue
            try:
                total += path.stat().st_size
            except OSError as exc:
                raise ContextInputError(f"--context {path}: {exc.strerror or exc}") from None
            if total > options.max_bytes:
                raise _too_big(
                    "--context", f"{folder} (a folder)", f"over {_human(total)}", options
                )
            files.append((path.relative_to(folder).as_posix(), path))
    texts: dict[str, str] = {}
    skipped: list[str] = []
    for key, path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ContextInputError(f"--context {path}: {exc.strerror or exc}") from None
        try:
            texts[key] = _decode(data, "--context", key, options)
        except ContextInputError:
            skipped.append(key)
    if skipped:
        shown = ", ".join(skipped[:3]) + (", …" if len(skipped) > 3 else "")
        warn(
            f"--context {folder}: skipped {len(skipped)} binary file(s) not readable as "
            f"{options.codec} text ({shown}); read {len(texts)} file(s)"
        )
    if not texts:
        raise ContextInputError(
            f"--context {folder} has no {options.codec} text files "
            f"({len(skipped)} binary file(s) skipped)"
        )
    return texts


def _raise_walk_error(exc: OSError) -> None:
    raise ContextInputError(f"--context {exc.filename}: {exc.strerror or exc}")


def _human(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"
