"""The ``rlm`` command: run, chat, demo, exec, doctor, image, security-check, serve, view."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from rich.markup import escape
from rich.table import Table

from rlm.cli_common import (
    SWEEP_WAIT,
    config_from_args,
    failure,
    read_answer_schema,
    read_context_arg,
    signal_name,
    start_sweep,
    status_note,
    stderr,
    stdout,
    with_limit_flags,
)
from rlm.config import BACKENDS, RLMConfig
from rlm.context_input import DEFAULT_MAX_BYTES, parse_size
from rlm.errors import BridgeRefusal, ConfigurationError, SnapshotError
from rlm.image import DEFAULT_IMAGE
from rlm.interrupts import interruptible, stop_signals_raise

if TYPE_CHECKING:
    from rlm.session import SessionState
    from rlm.subcalls.batcher import SubResult

EXIT_CODES_HELP = """\
exit codes of `rlm run` (with --json, also its "status" and "exit_code" fields):
  0             answered        the model answered
  3             forced          made to answer at the iteration bound (--max-iterations)
  3             no_answer       made to answer, it named a missing variable (FINAL_VAR)
  3             invalid_answer  the answer did not match --answer-schema, after retries
  4             limit           a session budget (--max-sub-calls, --max-tokens, batch
                                or prompt size) refused work: the answer may lack it
  2             config_error    bad flags, no model or key, an unreadable context
  5             provider_error  the root model could not be reached, or refused, after
                                retries
  6             sandbox_error   Docker unavailable; the sandbox would not start or broke
                                the protocol
  130/143/129   interrupted     SIGINT/SIGTERM/SIGHUP: the run is cancelled and its
                                sandbox removed before rlm exits
when several apply: interrupted > an error > limit > invalid_answer, no_answer, forced
  > answered"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    with stop_signals_raise():
        try:
            return int(args.handler(args))
        except BaseException as exc:
            ending = failure(exc)
            if ending is None:
                raise
            status, code, message = ending
            color = "yellow" if status == "interrupted" else "red"
            stderr.print(f"[{color}]rlm: {escape(message)}[/]")
            if getattr(args, "json", False) and getattr(args, "json_status", False):
                report: dict[str, Any] = {"status": status, "exit_code": code, "error": message}
                if isinstance(exc, KeyboardInterrupt):
                    report["signal"] = signal_name(exc)
                stdout.print_json(data=report)
            return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm",
        description="Recursive Language Models, run safely and fast.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(metavar="COMMAND")

    def backend_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--backend", choices=BACKENDS, help="where code runs (RLM_BACKEND; default auto)"
        )
        p.add_argument("--runtime", choices=("runc", "runsc"), help="Docker runtime")

    def model_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="root model (RLM_MODEL)")
        p.add_argument("--sub-model", help="sub-call model (RLM_SUB_MODEL; default: --model)")

    run = commands.add_parser(
        "run",
        help="answer a query about a context file",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def context_flags(p: argparse.ArgumentParser, *, required: bool, stdin: bool = True) -> None:
        # `rlm chat` reads its questions from stdin, so its context cannot come from there.
        dash, or_stdin = ("|-", "; or - for stdin") if stdin else ("", "")
        source = p.add_mutually_exclusive_group(required=required)
        source.add_argument(
            "--context",
            metavar=f"FILE|DIR{dash}",
            help="a text file (a .json file is read as JSON); a folder, read as a dict of "
            f"relative path -> text with binary files skipped{or_stdin}",
        )
        source.add_argument(
            "--context-json",
            metavar=f"FILE{dash}",
            help=f"a JSON list, object or string{or_stdin.replace(';', ',')}",
        )
        p.add_argument(
            "--context-encoding", metavar="ENC", help="the context's text encoding (default utf-8)"
        )
        p.add_argument(
            "--context-max-bytes",
            type=parse_size,
            default=DEFAULT_MAX_BYTES,
            metavar="SIZE",
            help="refuse a context larger than this (e.g. 512M, 4G; default 1G)",
        )

    def run_flags(p: argparse.ArgumentParser, run: str = "this run") -> None:
        backend_flags(p)
        model_flags(p)
        p.add_argument(
            "--max-iterations",
            type=int,
            metavar="N",
            help="root turns before a forced answer (RLM_MAX_ITERATIONS)",
        )
        p.add_argument(
            "--max-sub-calls",
            type=int,
            metavar="N",
            help=f"{run}'s sub-call budget (default 10000)",
        )
        p.add_argument(
            "--max-tokens", type=int, metavar="N", help=f"{run}'s token budget (default unbounded)"
        )
        p.add_argument(
            "--max-depth",
            type=int,
            metavar="D",
            help="levels of runs (RLM_MAX_DEPTH; default 1: rlm_query is a plain sub-call, "
            "2: child RLMs without grandchildren)",
        )
        p.add_argument("--child-model", help="child RLMs' root model (RLM_CHILD_MODEL)")
        p.add_argument(
            "--max-cost-usd",
            type=float,
            metavar="USD",
            help=f"{run}'s cost budget, priced with RLM_PRICES",
        )
        p.add_argument(
            "--max-wall-time", type=float, metavar="S", help=f"seconds {run} may take in all"
        )
        p.add_argument(
            "--max-children",
            type=int,
            metavar="N",
            help=f"child RLMs {run} may start (default 100)",
        )
        p.add_argument(
            "--max-consecutive-errors",
            type=int,
            metavar="N",
            help=f"stop {run} when its cells fail N times in a row",
        )
        p.add_argument("--trajectory", help="append the events as JSON lines here")

    context_flags(run, required=True)
    run.add_argument("--query", required=True)
    run_flags(run)
    run.add_argument(
        "--answer-schema",
        metavar="FILE",
        help='a JSON Schema file the answer must match; --json then gives it as "value"',
    )
    run.add_argument("--stream", action="store_true", help="show the root model's tokens")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.set_defaults(handler=cmd_run, json_status=True)

    chat = commands.add_parser(
        "chat",
        help="an interactive session about a context: one question per line",
        description="Ask questions about a context, one per line; the sandbox and its "
        "variables stay between them. /help lists the commands (/fork, /save, /usage...).",
    )
    context_flags(chat, required=False, stdin=False)
    chat.add_argument("--restore", metavar="FILE", help="go on from a session saved with /save")
    run_flags(chat, run="each turn")
    chat.set_defaults(handler=cmd_chat)

    demo = commands.add_parser("demo", help="find a needle in a ~1M-line context, offline")
    demo.add_argument("--lines", type=int, default=1_000_000)
    demo.add_argument(
        "--offline",
        action="store_true",
        help="use the built-in offline model even when OPENAI_API_KEY is set",
    )
    backend_flags(demo)
    model_flags(demo)
    demo.add_argument("--trajectory")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(handler=cmd_demo, json_status=True)

    exe = commands.add_parser("exec", help="run one cell in a fresh sandbox")
    exe.add_argument("file", help="a Python file, or - for stdin")
    backend_flags(exe)
    exe.add_argument("--sub-model", help="model for llm_query/llm_batch")
    exe.add_argument("--timeout", type=float, default=60.0)
    exe.add_argument("--json", action="store_true")
    exe.set_defaults(handler=cmd_exec)

    doctor = commands.add_parser("doctor", help="check which backends work here")
    doctor.add_argument(
        "--cleanup", action="store_true", help="remove sandbox containers left by a crash"
    )
    doctor.add_argument("--runtime", choices=("runc", "runsc"))
    doctor.set_defaults(handler=cmd_doctor)

    image = commands.add_parser("image", help="the sandbox image")
    image_commands = image.add_subparsers(metavar="ACTION")
    build = image_commands.add_parser("build", help="build the sandbox image")
    build.add_argument(
        "--offline", action="store_true", help="build from a debootstrap base, no registry"
    )
    build.add_argument("--tag", help=f"image name (RLM_IMAGE; default {DEFAULT_IMAGE})")
    build.add_argument("--base-image", help="base image for the Dockerfile")
    build.set_defaults(handler=cmd_image_build)

    check = commands.add_parser(
        "security-check", help="run the attack corpus against this deployment"
    )
    check.add_argument("--backend", choices=("restricted", "docker"))
    check.add_argument("--runtime", choices=("runc", "runsc"))
    check.add_argument("--image", help="sandbox image to attack (RLM_IMAGE)")
    check.add_argument("--category", action="append", help="only these categories")
    check.add_argument("--json", action="store_true")
    for flag in ("--service", "--token", "--other-token", "--slow-bound"):
        check.add_argument(flag, help="--service URL --token T: attack a running `rlm serve`")
    check.set_defaults(handler=cmd_security_check)

    serve = commands.add_parser(
        "serve",
        help="serve RLM runs to many tenants over HTTP (OpenAI-compatible)",
        description="Serve RLM runs over HTTP: POST /v1/chat/completions (OpenAI-"
        "compatible), /v1/runs and their events, /v1/usage, /v1/models, /healthz, "
        "/metrics. The provider's key and URL come from OPENAI_API_KEY and "
        "OPENAI_BASE_URL (or .env).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    serve.add_argument("-h", "--help", action=_ServeHelp, help="show this help and every key")
    serve.add_argument("--config", required=True, metavar="FILE", help="the service's TOML file")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.set_defaults(handler=cmd_serve)

    view = commands.add_parser("view", help="see a trajectory file in the browser, live")
    view.add_argument("trajectory", metavar="TRAJECTORY.jsonl")
    view.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any)")
    view.set_defaults(handler=cmd_view)
    return parser


def cmd_view(args: argparse.Namespace) -> int:
    from rlm.viewer.server import serve_file

    return serve_file(args.trajectory, args.port)


class _ServeHelp(argparse.Action):
    """`rlm serve --help` lists every config key; the service's modules load only then."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from rlm.service.config import CONFIG_HELP

        parser.epilog = CONFIG_HELP
        parser.print_help()
        parser.exit()


def cmd_serve(args: argparse.Namespace) -> int:
    # The web stack and the model client load here, after main() has taken the
    # stop signals, as for every other command.
    from rlm.service.serve import main as serve_main

    return serve_main(args)


# -- run / demo ---------------------------------------------------------------------------


def _complete(
    config: RLMConfig,
    context: Any,
    query: str,
    args: argparse.Namespace,
    answer_schema: dict[str, Any] | None = None,
) -> Any:
    from rlm.core import RLM
    from rlm.progress import RunReporter

    as_json = getattr(args, "json", False)
    stream = getattr(args, "stream", False)

    async def complete(rlm: RLM) -> Any:
        return await rlm.acompletion(context, query, answer_schema=answer_schema)

    # Everything alive now (the imported modules' objects, the context) outlives the
    # run. Frozen, it is left out of the collector's full passes, which otherwise
    # paused this process 60-75 ms every few batches, each time in the middle of a
    # batch; after it, 3 ms (bench/README.md).
    gc.freeze()
    if as_json:
        rlm = RLM(config, trajectory_path=args.trajectory)
        return anyio.run(interruptible, complete, rlm)
    with RunReporter(stderr) as reporter:

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "root_delta":
                stderr.out(event["text"], end="", style="dim")
            else:
                reporter(event)

        rlm = RLM(config, trajectory_path=args.trajectory, on_event=on_event, stream=stream)
        return anyio.run(interruptible, complete, rlm)


def _print_result(result: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        stdout.print_json(data={**result.to_dict(), **(extra or {})})
        return
    usage = result.usage
    stderr.print(
        f"[bold]done[/] in {result.wall_time_s:.2f} s: {result.iterations} iterations, "
        f"{usage.sub_calls} sub-calls, {usage.total_tokens:,} tokens{status_note(result)}"
    )
    stdout.print(result.answer, markup=False)


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(
        args,
        max_iterations=args.max_iterations,
        max_depth=args.max_depth,
        child_model=args.child_model,
    )
    config = with_limit_flags(config, args)
    schema = read_answer_schema(args.answer_schema)
    # Beside the context's reading, which can take seconds for a big one.
    sweeper = start_sweep(config)
    context = read_context_arg(args)
    if sweeper is not None:
        sweeper.join(SWEEP_WAIT)
    result = _complete(config, context, args.query, args, schema)
    _print_result(result, args.json)
    return int(result.exit_code)


def cmd_chat(args: argparse.Namespace) -> int:
    from rlm.chat import run_chat
    from rlm.core import RLM

    config = config_from_args(
        args,
        max_iterations=args.max_iterations,
        max_depth=args.max_depth,
        child_model=args.child_model,
    )
    config = with_limit_flags(config, args)
    if args.context is None and args.context_json is None and args.restore is None:
        raise ConfigurationError(
            "rlm chat needs a context (--context FILE|DIR or --context-json FILE) "
            "or a saved session (--restore FILE)"
        )
    if "-" in (args.context, args.context_json):
        # Questions are read from standard input: a context piped in would leave none.
        raise ConfigurationError(
            "rlm chat reads its questions from standard input: give the context as a "
            "file (--context FILE)"
        )
    restore = None
    if args.restore is not None:
        try:
            restore = Path(args.restore).read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"--restore {args.restore}: cannot read it ({exc.strerror})"
            ) from None
    sweeper = start_sweep(config)
    context = None
    if args.context is not None or args.context_json is not None:
        context = read_context_arg(args)
    if sweeper is not None:
        sweeper.join(SWEEP_WAIT)
    rlm = RLM(config, trajectory_path=args.trajectory)
    try:
        return run_chat(rlm, context=context, restore=restore, out=stdout, err=stderr)
    except SnapshotError as exc:
        # Only the start restores: the file given is at fault, not the sandbox.
        raise ConfigurationError(f"--restore {args.restore}: {exc}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    from rlm.demo import make_haystack

    started = time.monotonic()
    haystack = make_haystack(args.lines)
    made = time.monotonic() - started
    if not args.json:
        stderr.print(
            f"generated a context of {args.lines:,} lines ({len(haystack.text) / 1e6:.1f} MB) "
            f"in {made:.1f} s; the needle is on line {haystack.needle_line:,}"
        )
    offline = args.offline or not os.environ.get("OPENAI_API_KEY")
    if offline:
        from rlm.testing import OfflineModelServer

        with OfflineModelServer() as server:
            if not args.json:
                stderr.print(f"no OPENAI_API_KEY: using the offline model at {server.base_url}")
            config = config_from_args(
                args,
                api_key="offline",
                base_url=server.base_url,
                model=args.model or server.root_model,
                sub_model=args.sub_model or "rlm-offline-sub",
            )
            result = _complete(config, haystack.text, haystack.query, args)
    else:
        result = _complete(config_from_args(args), haystack.text, haystack.query, args)
    correct = haystack.answer in result.answer
    if args.json:
        extra = {"expected": haystack.answer, "correct": correct, "exit_code": 0 if correct else 1}
        _print_result(result, True, extra)
    else:
        stderr.print(f"query: {haystack.query}")
        _print_result(result, False)
        mark = "[green]correct[/]" if correct else f"[red]wrong (expected {haystack.answer})[/]"
        stderr.print(mark)
    return 0 if correct else 1


# -- exec ---------------------------------------------------------------------------------


class _NoModel:
    """Stands in for the batcher when no model is configured, so the refusal is clear."""

    async def run(
        self,
        session: SessionState,
        model: str,
        prompts: list[str],
        max_concurrent: int | None,
        *,
        on_result: Any = None,
    ) -> list[SubResult]:
        raise BridgeRefusal(
            "no model is configured for sub-calls: set OPENAI_API_KEY (and OPENAI_BASE_URL "
            "for a local server) and RLM_SUB_MODEL"
        )


def cmd_exec(args: argparse.Namespace) -> int:
    code = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    config = config_from_args(args)
    result, backend = anyio.run(interruptible, _exec, config, code, args.timeout)
    if args.json:
        stdout.print_json(data={**result.to_dict(), "backend": backend})
    else:
        if result.stdout:
            sys.stdout.write(result.stdout)
        if result.stderr:
            sys.stderr.write(result.stderr)
        if result.error:
            sys.stderr.write(result.error.rstrip("\n") + "\n")
        if result.timed_out:
            stderr.print(f"[red]rlm: the cell was stopped after {args.timeout:g} s[/]")
    return 1 if (result.error or result.timed_out) else 0


async def _exec(config: RLMConfig, code: str, timeout: float) -> tuple[Any, str]:
    from rlm.stack import build_session, choose_backend

    # Without a model, sub-calls are refused with what to set (the cell still runs).
    no_model = not (config.api_key and config.effective_sub_model)
    stack = build_session(
        config, await choose_backend(config), batcher=_NoModel() if no_model else None
    )
    try:
        await stack.start()
        return await stack.sandbox.execute(code, timeout), stack.sandbox.name
    finally:
        await stack.aclose()


# -- doctor / image -----------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from rlm.backends import docker

    config = config_from_args(args)
    if args.cleanup:
        removed = docker.cleanup_leftovers()
        stderr.print(f"removed {removed} leftover sandbox container(s)")
    table = Table(title="rlm doctor", show_lines=False)
    table.add_column("check")
    table.add_column("ok")
    table.add_column("detail / what to do")
    checks: list[tuple[str, bool, str]] = [_restricted_check()]
    checks.extend(docker.doctor_checks(config))
    model_ok = bool(config.api_key)
    checks.append(
        (
            "model",
            model_ok,
            f"OPENAI_API_KEY set; base URL {config.base_url or 'default (api.openai.com)'}; "
            f"root {config.model or 'unset (RLM_MODEL)'}"
            if model_ok
            else "OPENAI_API_KEY is not set: `rlm run` needs it; `rlm demo` runs offline",
        )
    )
    for name, ok, detail in checks:
        table.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", detail)
    stdout.print(table)
    from rlm.stack import resolve_backend

    choice = resolve_backend(config.with_(backend="auto"))
    stdout.print(f"--backend auto would use [bold]{choice.name}[/] ({choice.reason})")
    return 0 if checks[0][1] else 1


def _restricted_check() -> tuple[str, bool, str]:
    from rlm.backends.restricted import RestrictedSandbox
    from rlm.bridge import SessionBridge
    from rlm.session import SessionState

    async def probe() -> str:
        sandbox = RestrictedSandbox(SessionBridge(_NoModel(), SessionState(sub_model="none")))
        async with sandbox:
            result = await sandbox.execute("print(6 * 7)", 5.0)
        return result.stdout.strip()

    try:
        out = anyio.run(probe)
    except Exception as exc:  # doctor reports every failure rather than crashing
        return ("restricted backend", False, f"failed: {exc}")
    ok = out == "42"
    return ("restricted backend", ok, "in-process RestrictedPython" if ok else f"got {out!r}")


def cmd_image_build(args: argparse.Namespace) -> int:
    from rlm.image import build_image

    config = RLMConfig.from_env()
    tag = args.tag or config.image
    build_image(tag, offline=args.offline, base_image=args.base_image)
    stderr.print(f"built {tag}")
    return 0


def cmd_security_check(args: argparse.Namespace) -> int:
    from rlm.security.check import run_security_check
    from rlm.security.service_target import main_for

    if args.service is not None:
        return main_for(args, stdout)
    return run_security_check(
        backend=args.backend,
        runtime=args.runtime,
        image=args.image,
        categories=args.category,
        as_json=args.json,
        console=stdout,
    )


if __name__ == "__main__":
    raise SystemExit(main())
