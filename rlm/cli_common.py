"""What the ``rlm`` commands share: their consoles, settings and inputs from flags
(the config, the context, an answer schema), the sweep of leftover containers, and
how a failure ends a command (its status, exit code and one line)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from rlm.config import RLMConfig
from rlm.context_input import ContextOptions, read_context, read_context_json
from rlm.errors import ConfigurationError, ModelCallError, RLMError, SandboxError
from rlm.result import EXIT_CODES, RunStatus

# soft_wrap: an error stays one line however narrow the terminal.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


def failure(exc: BaseException) -> tuple[RunStatus, int, str] | None:
    """How ``exc`` ends the command: its status, exit code and one line; None for a bug."""
    status: RunStatus
    if isinstance(exc, KeyboardInterrupt):
        name = signal_name(exc)
        signum = getattr(exc, "signum", signal.SIGINT)
        what = f"interrupted by {name}"
        if getattr(exc, "during_run", False):
            what += ": the run was cancelled and its sandbox closed"
        return "interrupted", 128 + int(signum), what
    if isinstance(exc, ModelCallError):
        status = "provider_error"
    elif _from_docker(exc):
        return "sandbox_error", EXIT_CODES["sandbox_error"], f"error: Docker: {exc}"
    elif isinstance(exc, SandboxError):
        status = "sandbox_error"
    elif isinstance(exc, (RLMError, OSError, ValueError, TypeError)):
        # ConfigurationError, and what a bad flag or path raises before anything runs.
        status = "config_error"
    else:
        return None
    return status, EXIT_CODES[status], f"error: {exc}"


def _from_docker(exc: BaseException) -> bool:
    # The engine's client (and the HTTP library under it) can raise its own errors.
    return any(
        c.__module__.split(".")[0] in ("docker", "requests", "urllib3") for c in type(exc).__mro__
    )


def signal_name(exc: BaseException) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def config_from_args(args: argparse.Namespace, **extra: Any) -> RLMConfig:
    settings: dict[str, Any] = {
        "backend": getattr(args, "backend", None),
        "docker_runtime": getattr(args, "runtime", None),
        "model": getattr(args, "model", None),
        "sub_model": getattr(args, "sub_model", None),
    }
    settings.update({k: v for k, v in extra.items() if v is not None})
    return RLMConfig.from_env(**settings)


def read_context_arg(args: argparse.Namespace) -> Any:
    options = ContextOptions(encoding=args.context_encoding, max_bytes=args.context_max_bytes)

    def warn(line: str) -> None:
        stderr.print(f"[yellow]rlm: {escape(line)}[/]")

    if args.context_json is not None:
        return read_context_json(args.context_json, options, stdin=sys.stdin.buffer)
    return read_context(args.context, options, stdin=sys.stdin.buffer, warn=warn)


#: Limit flag → SessionLimits field.
_LIMIT_FLAGS = {
    "max_sub_calls": "max_sub_calls",
    "max_tokens": "max_tokens",
    "max_cost_usd": "max_cost_usd",
    "max_wall_time": "max_wall_time_s",
    "max_children": "max_children",
    "max_consecutive_errors": "max_consecutive_errors",
}


def with_limit_flags(config: RLMConfig, args: argparse.Namespace) -> RLMConfig:
    limits = config.limits
    for flag, name in _LIMIT_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if value < 0:
            raise ConfigurationError(f"--{flag.replace('_', '-')} must be 0 or more")
        limits = dataclasses.replace(limits, **{name: value})
    return config if limits is config.limits else config.with_(limits=limits)


#: Seconds a run waits for the leftover sweep before it starts anyway (the sweep goes
#: on beside it; it never touches a live process's containers).
SWEEP_WAIT = 3.0


def start_sweep(config: RLMConfig) -> threading.Thread | None:
    """Remove the sandbox containers of rlm processes that are gone, in a thread."""
    if config.backend == "restricted":
        return None
    thread = threading.Thread(
        target=_sweep, args=(config.backend == "docker",), name="rlm-sweep", daemon=True
    )
    thread.start()
    return thread


def _sweep(asked_for_docker: bool) -> None:
    # With `auto` and no engine the run goes to the restricted backend: nothing to say.
    def say(problem: BaseException) -> None:
        if asked_for_docker:
            first = (str(problem).strip().splitlines() or [type(problem).__name__])[0]
            stderr.print(
                "[yellow]rlm: could not sweep leftover sandbox containers "
                f"({escape(first[:160])}); going on[/]"
            )

    try:
        import docker

        from rlm.backends.docker import sweep_orphans

        client = docker.from_env(timeout=10)
    except Exception as exc:
        say(exc)
        return
    try:
        removed = sweep_orphans(client)
    except Exception as exc:
        say(exc)
        return
    finally:
        client.close()
    if removed:
        stderr.print(f"rlm: removed {removed} leftover sandbox container(s) of ended runs")


def read_answer_schema(path: str | None) -> dict[str, Any] | None:
    """The JSON Schema in ``path`` (``--answer-schema``), checked before any run starts."""
    if path is None:
        return None
    from rlm.answers import answer_schema

    flag = f"--answer-schema {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(f"{flag}: cannot read it ({why})") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{flag} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigurationError(
            f"{flag} must hold a JSON Schema object ({{...}}), not a JSON {_json_kind(schema)}"
        )
    try:
        answer_schema(schema)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{flag}: {exc}") from None
    return schema


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "null" if value is None else "number"


def status_note(result: Any) -> str:
    notes = []
    if getattr(result, "invalid_answer", None):
        notes.append(f"the answer does not match the answer schema: {result.invalid_answer}")
    if result.limits:
        refused = ", ".join(f"{kind} refused {n}" for kind, n in result.limits.items())
        notes.append(f"a session limit was reached ({refused}): the answer may lack that work")
    if result.stopped:
        notes.append(
            f"the run stopped at its {result.stopped} limit: the answer may lack that work"
        )
    if result.forced and not result.stopped:
        notes.append("forced to answer at the iteration bound")
    return "".join(f" [yellow]({note})[/]" for note in notes)
