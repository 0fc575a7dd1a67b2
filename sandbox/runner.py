"""The sandbox's own process: runs model code cells in one persistent namespace.

It talks to the host over its stdin/stdout with :mod:`protocol` frames. Before
anything else it moves the protocol onto private file descriptors and points fd 0
at /dev/null and fds 1 and 2 at pipes it drains into the current cell's output,
so nothing model code does -- ``print``, ``os.write(1, ...)``, a child process --
can write into the protocol stream (except by deliberately finding the private
descriptor, which the host treats as hostile input and validates like anything
else).

Three threads: the main thread runs cells (so SIGINT can interrupt them), a reader
thread receives frames (replies to sub-calls and interrupts arrive while a cell is
running), and a drain thread copies fd-level output into the capture buffers.

End of file on the protocol's input means the host is gone (Docker closes the
container's stdin when the host's attach connection ends): the reader thread ends
the whole process at once with exit code 0, whatever a cell is doing -- a loop, a
sleep, a wait for a sub-call's reply that will never come. Only a cell inside one
long call of C code that holds the interpreter lock delays it until that call
returns. A broken channel (a malformed frame) ends it with exit code 3.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import itertools
import linecache
import os
import queue
import select
import signal
import sys
import threading
import traceback
from codecs import getincrementaldecoder
from typing import Any

from . import protocol, snapshot
from .api import RLMCallError, make_functions
from .final import Finals
from .names import name_problem

_HERE = os.path.dirname(__file__)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: The part of a cell's output kept when it overflows, and what replaces the rest.
_TRUNCATED = "\n... [output truncated: {n:,} more characters]"


class _Capture:
    """A text sink that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._kept = 0
        self._dropped = 0
        self.limit = 0

    def reset(self, limit: int) -> None:
        with self._lock:
            self._parts, self._kept, self._dropped, self.limit = [], 0, 0, limit

    def add(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            room = self.limit - self._kept
            if room > 0:
                piece = text[:room]
                self._parts.append(piece)
                self._kept += len(piece)
            self._dropped += max(0, len(text) - max(room, 0))

    def take(self) -> tuple[str, bool]:
        with self._lock:
            text = "".join(self._parts)
            dropped = self._dropped
            self._parts, self._kept, self._dropped = [], 0, 0
        if dropped:
            text += _TRUNCATED.format(n=dropped)
        return text, bool(dropped)


class _Stream:
    """What ``sys.stdout`` / ``sys.stderr`` are while the runner lives."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, capture: _Capture, fileno: int) -> None:
        self._capture = capture
        self._fileno = fileno

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._capture.add(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def fileno(self) -> int:
        # Code that writes to the descriptor directly lands in the drained pipe.
        return self._fileno

    @property
    def buffer(self) -> _BinaryStream:
        return _BinaryStream(self)


class _BinaryStream:
    """``sys.stdout.buffer``: bytes in, decoded into the same capture."""

    def __init__(self, text: _Stream) -> None:
        self._text = text

    def write(self, data: bytes) -> int:
        self._text.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        pass


class _Call:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: str | None = None


class Runner:
    """One sandbox: the namespace, the channel to the host, the capture buffers."""

    def __init__(self, proto_in: int, proto_out: int, out_pipe: int, err_pipe: int) -> None:
        self._in = proto_in
        self._out = proto_out
        self._send_lock = threading.Lock()
        self._requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._calls: dict[int, _Call] = {}
        self._calls_lock = threading.Lock()
        self._call_ids = itertools.count(1)
        self._cell_lock = threading.Lock()
        self._cell_id: int | None = None
        self._armed = False
        self._stdout = _Capture()
        self._stderr = _Capture()
        self._pipes = {out_pipe: self._stdout, err_pipe: self._stderr}
        self._decoders = {fd: getincrementaldecoder("utf-8")("replace") for fd in self._pipes}
        self._drain_lock = threading.Lock()
        self._cells = itertools.count(1)
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.namespace.update(make_functions(self._transport))
        self._finals = Finals(self.namespace, limit=0)
        self.namespace.update(self._finals.functions())
        self._tool_names: list[str] = []

    # -- channel ---------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            for chunk in protocol.encode(message):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._out, view) :]

    def _read_loop(self) -> None:
        decoder = protocol.Decoder(max_message=1 << 40)
        inbox = bytearray(1 << 20)  # reused: a fresh 1 MiB per read cost page faults
        view = memoryview(inbox)
        while True:
            try:
                size = os.readv(self._in, [inbox])
            except InterruptedError:
                continue
            if not size:
                # The host is gone: no one will read a result, and a busy cell must
                # not keep the container alive, so end the process, not the thread.
                os._exit(0)
            with view[:size] as data:
                payloads = decoder.feed(data)
            for payload in payloads:
                message = protocol.parse(payload, protocol.FROM_HOST)
                self._route(message)

    def _route(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("reply", "refused"):
            with self._calls_lock:
                call = self._calls.get(message["id"])
            if call is not None:  # else the caller was interrupted and left
                if kind == "reply":
                    call.result = message["result"]
                else:
                    call.error = message["message"]
                call.done.set()
        elif kind == "interrupt":
            with self._cell_lock:
                if self._cell_id == message["id"] and self._armed:
                    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        else:
            self._requests.put(message)

    def _transport(self, method: str, params: dict[str, Any]) -> Any:
        call = _Call()
        call_id = next(self._call_ids)
        with self._calls_lock:
            self._calls[call_id] = call
        try:
            self.send({"type": "call", "id": call_id, "method": method, "params": params})
            call.done.wait()  # interruptible by SIGINT in the main thread
        finally:
            with self._calls_lock:
                self._calls.pop(call_id, None)
        if call.error is not None:
            raise RLMCallError(call.error)
        return call.result

    # -- output ----------------------------------------------------------------

    def _drain_loop(self) -> None:
        fds = list(self._pipes)
        while True:
            ready, _, _ = select.select(fds, [], [])
            with self._drain_lock:
                for fd in ready:
                    self._drain_fd(fd)

    def _drain_fd(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            self._pipes[fd].add(self._decoders[fd].decode(data))

    def _drain_now(self) -> None:
        # Everything written to fds 1/2 before this point is in the pipes already.
        # One select asks both pipes at once; a read of each cost two system calls
        # per drain, twice a cell, most often to learn that nothing was there.
        with self._drain_lock:
            ready, _, _ = select.select(list(self._pipes), [], [], 0)
            for fd in ready:
                self._drain_fd(fd)

    # -- requests --------------------------------------------------------------

    def serve(self) -> None:
        for name, loop in (("rlm-reader", self._read_loop), ("rlm-drain", self._drain_loop)):
            threading.Thread(target=self._guarded(loop), name=name, daemon=True).start()
        while True:
            message = self._requests.get()
            if message is None:
                return
            self._handle(message)

    def _guarded(self, loop: Any) -> Any:
        def run() -> None:
            try:
                loop()
            except BaseException as exc:  # a broken channel: tell the host, then stop
                try:
                    self.send({"type": "fatal", "message": f"{type(exc).__name__}: {exc}"[:2000]})
                finally:
                    os._exit(3)

        return run

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "hello":
            self.send(
                {
                    "type": "hello",
                    "protocol": protocol.PROTOCOL_VERSION,
                    "python": sys.version.split()[0],
                }
            )
        elif kind == "load_context":
            self.namespace["context"] = message["context"]
            del message["context"]  # keep a single reference to a large context
            self.send({"type": "loaded", "id": message["id"]})
        elif kind == "bind":
            problem = name_problem(message["name"], self._tool_names)
            if problem is not None:  # the host checks names first: this is a broken host
                self.send({"type": "fatal", "message": f"cannot bind {problem}"[:2000]})
                os._exit(3)
            self.namespace[message["name"]] = message["value"]
            del message["value"]
            self.send({"type": "loaded", "id": message["id"]})
        elif kind == "snapshot":
            self.send(self._snapshot(message["id"], message["max_bytes"]))
        elif kind == "restore":
            self.send(self._restore(message["id"], message.pop("blob")))
        elif kind == "define_tools":
            self._define_tools(message["tools"])
            self.send({"type": "loaded", "id": message["id"]})
        elif kind == "execute":
            self._finals.begin(message["final_limit"])
            self.send(self._execute(message["id"], message["code"], message["output_limit"]))
        elif kind == "get_variable":
            self.send(self._variable(message["id"], message["name"], message["max_chars"]))

    def _snapshot(self, req_id: int, max_bytes: int) -> dict[str, Any]:
        try:
            blob, names, skipped = snapshot.encode(self.namespace, max_bytes, self._tool_names)
        except Exception as exc:  # never the runner's end: the host hears why
            blob, names, _ = snapshot.encode({}, max_bytes)
            skipped = {"...": f"the snapshot failed ({type(exc).__name__}: {exc})"[:500]}
        return {"type": "snapshot", "id": req_id, "blob": blob, "names": names, "skipped": skipped}

    def _restore(self, req_id: int, blob: str) -> dict[str, Any]:
        reply: dict[str, Any] = {"type": "restored", "id": req_id, "names": [], "error": None}
        try:
            values = snapshot.decode(blob, len(blob), self._tool_names)
        except snapshot.SnapshotInvalid as exc:
            return {**reply, "error": str(exc)[:2000]}
        except Exception as exc:  # all or nothing: the namespace is untouched
            return {**reply, "error": f"the snapshot could not be read ({type(exc).__name__})"}
        del blob
        self.namespace.update(values)
        return {**reply, "names": list(values)}

    def _define_tools(self, specs: list[dict[str, Any]]) -> None:
        try:
            functions = make_functions(self._transport, specs)
        except Exception as exc:  # a spec this runner cannot read: no half-defined tools
            self.send({"type": "fatal", "message": f"bad tool specs: {exc!r}"[:2000]})
            os._exit(3)
        # Tools of an earlier definition that are gone must not stay callable.
        for name in self._tool_names:
            self.namespace.pop(name, None)
        self.namespace.update(functions)
        self._tool_names = [spec["name"] for spec in specs] + (["ToolError"] if specs else [])

    def _execute(self, cell_id: int, code: str, limit: int) -> dict[str, Any]:
        self._drain_now()
        self._stdout.reset(max(0, limit))
        self._stderr.reset(max(0, limit))
        filename = f"<cell-{next(self._cells)}>"
        error: str | None = None
        interrupted = False
        with self._cell_lock:
            self._cell_id = cell_id
        try:
            compiled = _compile(code, filename)
            try:
                self._armed = True
                try:
                    for block, display in compiled:
                        value = eval(block, self.namespace)
                        if display and value is not None:
                            print(repr(value))
                finally:
                    # Armed still: str() of the answer may run model code.
                    self._finals.check_answer()
            finally:
                with self._cell_lock:
                    self._armed = False
                    self._cell_id = None
        except KeyboardInterrupt as exc:
            interrupted = True
            error = _format_error(exc, filename)
        except SyntaxError as exc:
            error = "".join(traceback.format_exception_only(type(exc), exc))
        except BaseException as exc:  # SystemExit too: the runner outlives model code
            error = _format_error(exc, filename)
        finally:
            # Model code may have replaced these; the next cell needs them back.
            signal.signal(signal.SIGINT, self.on_sigint)
            sys.stdout = _Stream(self._stdout, 1)
            sys.stderr = _Stream(self._stderr, 2)
            if getattr(sys.stdin, "closed", True):  # exit() closes it
                sys.stdin = _null_stdin()
        final, final_error = self._finals.take()
        if final_error is not None:
            error = f"{error}\n{final_error}" if error else final_error
        self._drain_now()
        stdout, cut_out = self._stdout.take()
        stderr, cut_err = self._stderr.take()
        return {
            "type": "result",
            "id": cell_id,
            "stdout": stdout,
            "stderr": stderr,
            "error": error,
            "truncated": cut_out or cut_err,
            "interrupted": interrupted,
            "final": final,
        }

    def on_sigint(self, signum: int, frame: Any) -> None:
        # Only a running cell is interrupted; a signal that lands after the cell
        # ended (the host's timer raced the result) must not hit the runner itself.
        if self._armed:
            raise KeyboardInterrupt

    def _variable(self, req_id: int, name: str, max_chars: int) -> dict[str, Any]:
        reply: dict[str, Any] = {"type": "variable", "id": req_id, "found": False}
        if not name.isidentifier() or name not in self.namespace:
            return {**reply, "value": "", "truncated": False}
        value = self.namespace[name]
        try:
            text = value if isinstance(value, str) else str(value)
        except Exception as exc:
            text = f"<{type(value).__name__} whose str() failed: {exc}>"
        cut = len(text) > max_chars
        return {**reply, "found": True, "value": text[:max_chars], "truncated": cut}


def _compile(code: str, filename: str) -> list[tuple[Any, bool]]:
    """Compile a cell; a trailing expression is shown like in a REPL."""
    tree = ast.parse(code, filename, "exec")
    lines = code.splitlines(keepends=True)
    linecache.cache[filename] = (len(code), None, lines, filename)
    if tree.body and isinstance(tail := tree.body[-1], ast.Expr):
        tree.body.pop()
        last = ast.Expression(tail.value)
        head = compile(tree, filename, "exec")
        return [(head, False), (compile(last, filename, "eval"), True)]
    return [(compile(tree, filename, "exec"), False)]


def _format_error(exc: BaseException, filename: str) -> str:
    # Show model code's frames only: the runner's own frames (and those of the
    # functions it gives model code: api, tools) mean nothing to it.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    report = traceback.TracebackException(type(exc), exc, tb)
    report.stack = traceback.StackSummary.from_list(
        [frame for frame in report.stack if os.path.dirname(frame.filename) != _HERE]
    )
    return "".join(report.format())


def _null_stdin() -> Any:
    # fd 0 is /dev/null: model code reading stdin gets EOF, never protocol bytes.
    return open(0, closefd=False)


def main() -> None:
    """Take over the process's standard descriptors and serve the host."""
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    for fd in (proto_in, proto_out):
        # Pipes of 1 MiB rather than 64 KiB (the unprivileged maximum): a context or a
        # batch's prompts cross in a sixteenth of the wake-ups. Not a pipe: no matter.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    pipes = []
    for fd in (1, 2):
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        os.set_blocking(read_end, False)
        pipes.append(read_end)
    runner = Runner(proto_in, proto_out, pipes[0], pipes[1])
    sys.stdin = _null_stdin()
    sys.stdout = _Stream(runner._stdout, 1)
    sys.stderr = _Stream(runner._stderr, 2)
    # Code that reaches for the originals must find the capture, not the protocol's
    # file descriptors; typeshed declares them final, the interpreter does not.
    sys.__stdout__ = sys.stdout  # type: ignore[misc,assignment]
    sys.__stderr__ = sys.stderr  # type: ignore[misc,assignment]
    signal.signal(signal.SIGINT, runner.on_sigint)
    runner.serve()
