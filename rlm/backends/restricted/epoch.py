"""One namespace epoch: its guards, with the builtins and module views built on them.

The pieces depend on each other: the builtins (:mod:`.builtins`) and the module
views' overrides (:mod:`.module_overrides`) are built on the guards
(:mod:`.guards`), while the guards hand out the stand-ins built there in place of
the real types (``type("")`` is the ``str`` model code sees) and the views on
``import``. They are wired together here, above all three, so that none of those
modules imports another in a circle.

A namespace thrown away after a stuck cell keeps its epoch, guards and all; the
fresh namespace that takes its place gets a new one (see :mod:`.sandbox`).
"""

from __future__ import annotations

import decimal
import fractions
from collections.abc import Callable
from typing import Any

from rlm_sandbox.final import Finals

from rlm.backends.restricted.builtins import make_builtins
from rlm.backends.restricted.guards import Guards
from rlm.backends.restricted.iteration import BigRange, safe_range
from rlm.backends.restricted.module_overrides import module_overrides
from rlm.backends.restricted.modules import ModuleView, module_attributes


class Epoch:
    """One incarnation of the namespace, with the guards bound to it."""

    def __init__(self, guards: Guards, namespace: dict[str, Any], value_limit: int) -> None:
        self.guards = guards
        self.namespace = namespace
        # Run on the cell's thread: str() of a value that is not JSON is guarded.
        self.finals = Finals(namespace, value_limit, to_text=guards.to_str, check=guards.check)
        namespace.update(self.finals.functions())


def new_guards(*, memory_limit: int, output_limit: int) -> Guards:
    """Guards for a new epoch, with their builtins, module views and type stand-ins."""
    guards = Guards(memory_limit=memory_limit, output_limit=output_limit)
    guards.module = _module_views(guards)
    guards.builtins = make_builtins(guards)
    guards.substitutes = {id(real): standin for real, standin in _type_map(guards).items()}
    return guards


def _module_views(g: Guards) -> Callable[[str], ModuleView]:
    """The epoch's module views by name, each built on first import."""
    views: dict[str, ModuleView] = {}

    def module(name: str) -> ModuleView:
        view = views.get(name)
        if view is None:
            attrs = module_attributes(name)
            attrs.update(module_overrides(g, name, attrs))
            view = views[name] = ModuleView(name, attrs)
        return view

    return module


def _type_map(g: Guards) -> dict[Any, Any]:
    """The real types model code sees as stand-ins: what ``type(x)`` and attributes give."""
    return {
        str: g.builtins["str"],
        int: g.builtins["int"],
        bytes: g.builtins["bytes"],
        bytearray: g.builtins["bytearray"],
        range: safe_range,
        BigRange: safe_range,
        map: g.builtins["map"],
        filter: g.builtins["filter"],
        decimal.Decimal: g.module("decimal").Decimal,
        decimal.Context: g.module("decimal").Context,
        fractions.Fraction: g.module("fractions").Fraction,
    }
