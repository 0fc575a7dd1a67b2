"""The compile policy: which Python a cell may be written in, and how it is rewritten.

RestrictedPython rewrites every attribute, item, iteration and write in a cell into a
call to a guard function (supplied by :class:`~.guards.Guards`);
:class:`SandboxPolicy` adds what an in-process sandbox with timeouts needs on top:
no ``except`` that could swallow a stop, no ``yield`` that could run cleanup code
outside any time limit, and calls to size checks around the operators that can
build a huge object in one C call.
"""

from __future__ import annotations

import ast
import threading
import types
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, cast

from RestrictedPython.compile import compile_restricted_exec
from RestrictedPython.transformer import (
    INSPECT_ATTRIBUTES,
    RestrictingNodeTransformer,
    copy_locations,
)

from rlm.backends.restricted.blocked import READABLE_DUNDERS


class CellRejected(Exception):
    """The cell does not compile under the sandbox's rules; ``args[0]`` says why."""


_BINOP_GUARDED = {ast.Pow: "**", ast.Mult: "*", ast.LShift: "<<", ast.Mod: "%"}
_AUG_OPS = {
    ast.Add: "+=",
    ast.Sub: "-=",
    ast.Mult: "*=",
    ast.Div: "/=",
    ast.Mod: "%=",
    ast.Pow: "**=",
    ast.LShift: "<<=",
    ast.RShift: ">>=",
    ast.BitOr: "|=",
    ast.BitXor: "^=",
    ast.BitAnd: "&=",
    ast.FloorDiv: "//=",
    ast.MatMult: "@=",
}
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _call(name: str, args: list[ast.expr], like: ast.AST) -> ast.Call:
    node = ast.Call(func=ast.Name(name, ast.Load()), args=args, keywords=[])
    copy_locations(node, like)  # type: ignore[arg-type]
    return node


def _walk_scope(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Every node under ``nodes`` that belongs to the same function scope."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _SCOPES):
            continue
        stack.extend(ast.iter_child_nodes(node))


class SandboxPolicy(RestrictingNodeTransformer):
    """RestrictedPython's policy, plus what an in-process sandbox with timeouts needs.

    - ``except:`` (bare) is refused and every ``except X`` goes through
      ``_rlm_catch_``, which only lets ``Exception`` subclasses be caught and, once a
      cell is being stopped, lets nothing be caught; ``break``/``continue``/``return``
      inside ``finally`` (which would discard the stop) are refused.
    - ``yield`` inside ``try`` is refused: a suspended generator runs its ``except``
      and ``finally`` code whenever it is garbage collected, on whatever thread
      that happens -- possibly the host's, outside any time limit.
    - ``**``, ``*``, ``<<`` and ``%`` go through ``_rlm_binop_`` (size checks) and
      formatted values in f-strings through ``_rlm_format_`` (width checks).
    - ``x[k] += v`` and ``x.a += v`` are allowed, through the write guard.
    """

    def visit_Try(self, node: ast.Try) -> Any:
        self._check_try(node)
        return self.node_contents_visit(node)

    def visit_TryStar(self, node: ast.AST) -> Any:
        self.error(node, "try/except* is not allowed in the sandbox.")

    def _check_try(self, node: ast.Try) -> None:
        for handler in node.handlers:
            if handler.type is None:
                self.error(
                    handler,
                    "a bare 'except:' is not allowed in the sandbox; write 'except Exception:'",
                )
        for child in _walk_scope(node.finalbody):
            if isinstance(child, ast.Return):
                self.error(child, "'return' inside 'finally' is not allowed in the sandbox.")
        self._check_loop_exits(node.finalbody)
        for child in _walk_scope([*node.body, *node.handlers, *node.orelse, *node.finalbody]):
            if isinstance(child, (ast.Yield, ast.YieldFrom)):
                self.error(child, "'yield' inside 'try' is not allowed in the sandbox.")

    def _check_loop_exits(self, body: list[ast.stmt]) -> None:
        # break/continue that leave the finally block itself (not a loop inside it).
        stack: list[ast.AST] = list(body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.Break, ast.Continue)):
                self.error(
                    node, f"'{type(node).__name__.lower()}' inside 'finally' is not allowed."
                )
            if isinstance(node, (*_SCOPES, ast.For, ast.While, ast.AsyncFor)):
                # A loop's own else-clause still belongs to the finally block.
                if isinstance(node, (ast.For, ast.While, ast.AsyncFor)):
                    stack.extend(node.orelse)
                continue
            stack.extend(ast.iter_child_nodes(node))

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> Any:
        node = cast(ast.ExceptHandler, super().visit_ExceptHandler(node))
        if node.type is not None:
            node.type = _call("_rlm_catch_", [node.type], node.type)
        return node

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        node = self.node_contents_visit(node)
        symbol = _BINOP_GUARDED.get(type(node.op))
        if symbol is None:
            return node
        return _call("_rlm_binop_", [ast.Constant(symbol), node.left, node.right], node)

    def visit_FormattedValue(self, node: ast.FormattedValue) -> Any:
        node = self.node_contents_visit(node)
        spec: ast.expr = node.format_spec if node.format_spec is not None else ast.Constant("")
        node.value = _call(
            "_rlm_format_", [node.value, ast.Constant(node.conversion), spec], node.value
        )
        node.conversion = -1
        node.format_spec = None
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        target = node.target
        if isinstance(target, ast.Name):
            return super().visit_AugAssign(node)
        op = ast.Constant(_AUG_OPS[type(node.op)])
        if isinstance(target, ast.Subscript):
            self.node_contents_visit(target)
            value = self.visit(node.value)
            call = _call("_rlm_aug_item_", [target.value, target.slice, op, value], node)
        elif isinstance(target, ast.Attribute):
            self.check_attribute_name(target)
            target.value = self.visit(target.value)
            value = self.visit(node.value)
            call = _call(
                "_rlm_aug_attr_", [target.value, ast.Constant(target.attr), op, value], node
            )
        else:  # pragma: no cover - the grammar allows nothing else
            self.not_allowed(node)
            return node
        stmt = ast.Expr(call)
        copy_locations(stmt, node)
        return stmt

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        if node.attr in READABLE_DUNDERS and isinstance(node.ctx, ast.Load):
            node = self.node_contents_visit(node)
            return _call("_getattr_", [node.value, ast.Constant(node.attr)], node)
        return super().visit_Attribute(node)

    def visit_Module(self, node: ast.Module) -> Any:
        # A trailing expression is shown like in a REPL (as the Docker runner does).
        # Wrapped after the checks: the guard's own name would not pass them.
        node = cast(ast.Module, super().visit_Module(node))
        if node.body and isinstance(node.body[-1], ast.Expr):
            last = node.body[-1]
            last.value = _call("_rlm_display_", [last.value], last.value)
        return node

    def check_attribute_name(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_") or node.attr in INSPECT_ATTRIBUTES:
            self.error(node, f'"{node.attr}" is an invalid attribute name in the sandbox.')


def compile_cell(source: str, filename: str) -> types.CodeType:
    """Compile one cell under :class:`SandboxPolicy`; raises CellRejected with why not.

    The result depends on the source alone, so it is cached by source (model code
    often runs the same cell again): a cached code object is handed out renamed to
    ``filename``, nested code objects included, so tracebacks and the stop logic
    (:mod:`.jobs`, which tells cell frames by their file name) see this cell.
    """
    cached = _CACHE.get(source)
    if cached is None:
        result = compile_restricted_exec(source, filename=filename, policy=SandboxPolicy)
        if result.errors or result.code is None:
            cached = CellRejected("\n".join(result.errors) or "the cell could not be compiled")
        else:
            cached = result.code
        _CACHE.put(source, cached)
    if isinstance(cached, CellRejected):
        raise CellRejected(*cached.args)
    return cached if cached.co_filename == filename else _renamed(cached, filename)


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(
        _renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


class _CompileCache:
    """The last compiled cells by source, bounded in count and in source size."""

    def __init__(self, entries: int, max_source: int) -> None:
        self.entries = entries
        self.max_source = max_source
        self._items: OrderedDict[str, types.CodeType | CellRejected] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: str) -> types.CodeType | CellRejected | None:
        with self._lock:
            found = self._items.get(source)
            if found is not None:
                self._items.move_to_end(source)
            return found

    def put(self, source: str, compiled: types.CodeType | CellRejected) -> None:
        if len(source) > self.max_source:
            return
        with self._lock:
            self._items[source] = compiled
            while len(self._items) > self.entries:
                self._items.popitem(last=False)


#: Shared by every sandbox of the process: code objects are immutable, and what a
#: cell compiles to depends on its text and the policy only.
_CACHE = _CompileCache(entries=256, max_source=64 * 1024)
