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
    guards.substitutes = _TypeMap(guards)
    return guards


class _TypeMap(dict[int, Any]):
    """The stand-ins by the real type's id (see :func:`_type_map`).

    Those that live in a module view (``decimal``, ``fractions``) are looked up on
    first need: building those views when the sandbox starts was a third of its
    cost, and most sessions never meet a Decimal.
    """

    def __init__(self, g: Guards) -> None:
        super().__init__({id(real): standin for real, standin in _type_map(g).items()})
        self._guards = g
        self._lazy = {id(real) for real in _LAZY_TYPES}

    def get(self, key: int, default: Any = None) -> Any:
        found = dict.get(self, key)
        if found is None and key in self._lazy:
            self.update(
                {id(real): standin for real, standin in _lazy_type_map(self._guards).items()}
            )
            self._lazy = set()
            found = dict.get(self, key)
        return default if found is None else found


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
    }


#: Real types whose stand-ins are built with their module's view, when first needed.
_LAZY_TYPES = (decimal.Decimal, decimal.Context, fractions.Fraction)


def _lazy_type_map(g: Guards) -> dict[Any, Any]:
    return {
        decimal.Decimal: g.module("decimal").Decimal,
        decimal.Context: g.module("decimal").Context,
        fractions.Fraction: g.module("fractions").Fraction,
    }
