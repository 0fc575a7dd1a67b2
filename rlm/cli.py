"""The ``rlm`` command: run, demo, exec, doctor, image build, security-check."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from rich.console import Console
from rich.table import Table

from rlm.config import BACKENDS, RLMConfig
from rlm.errors import BridgeRefusal, RLMError
from rlm.image import DEFAULT_IMAGE

if TYPE_CHECKING:
    from rlm.session import SessionState
    from rlm.subcalls.batcher import SubResult

# soft_wrap: an error stays one line however narrow the terminal.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except RLMError as exc:
        stderr.print(f"[red]rlm: error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        stderr.print("[yellow]rlm: interrupted[/]")
        return 130
    except (OSError, ValueError, TypeError) as exc:
        stderr.print(f"[red]rlm: error:[/] {exc}")
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm", description="Recursive Language Models, run safely and fast."
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

    run = commands.add_parser("run", help="answer a query about a context file")
    run.add_argument("--context", required=True, help="a text or JSON file, or - for stdin")
    run.add_argument("--query", required=True)
    backend_flags(run)
    model_flags(run)
    run.add_argument("--max-iterations", type=int)
    run.add_argument("--trajectory", help="append the run's events as JSON lines here")
    run.add_argument("--stream", action="store_true", help="show the root model's tokens")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.set_defaults(handler=cmd_run)

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
    demo.set_defaults(handler=cmd_demo)

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
    check.set_defaults(handler=cmd_security_check)
    return parser


# -- run / demo ---------------------------------------------------------------------------


def _config(args: argparse.Namespace, **extra: Any) -> RLMConfig:
    settings: dict[str, Any] = {
        "backend": getattr(args, "backend", None),
        "docker_runtime": getattr(args, "runtime", None),
        "model": getattr(args, "model", None),
        "sub_model": getattr(args, "sub_model", None),
    }
    settings.update({k: v for k, v in extra.items() if v is not None})
    return RLMConfig.from_env(**settings)


def _read_context(path: str) -> Any:
    raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path} is not valid JSON ({exc}); rename it to read it as text"
            ) from None
    return raw


def _complete(config: RLMConfig, context: Any, query: str, args: argparse.Namespace) -> Any:
    from rlm.core import RLM
    from rlm.progress import RunReporter

    as_json = getattr(args, "json", False)
    stream = getattr(args, "stream", False)
    # Everything alive now (the imported modules' objects, the context) outlives the
    # run. Frozen, it is left out of the collector's full passes, which otherwise
    # paused this process 60-75 ms every few batches, each time in the middle of a
    # batch; after it, 3 ms (bench/README.md).
    gc.freeze()
    if as_json:
        rlm = RLM(config, trajectory_path=args.trajectory)
        return rlm.completion(context, query)
    with RunReporter(stderr) as reporter:

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "root_delta":
                stderr.out(event["text"], end="", style="dim")
            else:
                reporter(event)

        rlm = RLM(config, trajectory_path=args.trajectory, on_event=on_event, stream=stream)
        return rlm.completion(context, query)


def _print_result(result: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        stdout.print_json(data={**result.to_dict(), **(extra or {})})
        return
    usage = result.usage
    stderr.print(
        f"[bold]done[/] in {result.wall_time_s:.2f} s: {result.iterations} iterations, "
        f"{usage.sub_calls} sub-calls, {usage.total_tokens:,} tokens"
        + (" [yellow](forced to answer at the iteration bound)[/]" if result.forced else "")
    )
    stdout.print(result.answer, markup=False)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args, max_iterations=args.max_iterations)
    context = _read_context(args.context)
    result = _complete(config, context, args.query, args)
    _print_result(result, args.json)
    return 0


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
            config = _config(
                args,
                api_key="offline",
                base_url=server.base_url,
                model=args.model or server.root_model,
                sub_model=args.sub_model or "rlm-offline-sub",
            )
            result = _complete(config, haystack.text, haystack.query, args)
    else:
        result = _complete(_config(args), haystack.text, haystack.query, args)
    correct = haystack.answer in result.answer
    if args.json:
        _print_result(result, True, {"expected": haystack.answer, "correct": correct})
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
        self, session: SessionState, model: str, prompts: list[str], max_concurrent: int | None
    ) -> list[SubResult]:
        raise BridgeRefusal(
            "no model is configured for sub-calls: set OPENAI_API_KEY (and OPENAI_BASE_URL "
            "for a local server) and RLM_SUB_MODEL"
        )


def cmd_exec(args: argparse.Namespace) -> int:
    code = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    config = _config(args)
    result, backend = anyio.run(_exec, config, code, args.timeout)
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

    config = _config(args)
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
