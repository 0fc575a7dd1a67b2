"""The shape the design promises: small modules, and no module importing itself back.

A cycle is counted through every import, lazy ones inside functions and those under
``TYPE_CHECKING`` included: each is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Package name → its folder in the checkout (sandbox/ is installed as rlm_sandbox).
PACKAGES = {"rlm": REPO / "rlm", "rlm_sandbox": REPO / "sandbox"}
MAX_LINES = 600


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, by any import statement anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in known}


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_no_import_cycle_between_modules() -> None:
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_the_scan_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    known = {"rlm.a": tmp_path / "a.py", "rlm.b": tmp_path / "b.py", "rlm.c": tmp_path / "c.py"}
    known["rlm.a"].write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from rlm.b import Thing\n"
        "def later():\n    import rlm.c\n"
    )
    assert imports(known["rlm.a"], known) == {"rlm.b", "rlm.c"}


def test_the_cli_loads_without_the_model_stack() -> None:
    # `rlm` takes SIGTERM like Ctrl-C from the moment main() starts; aiohttp and
    # docker must come after that, not before. The openai SDK (most of a second to
    # import) is loaded only for a streamed reply: not by the public names at all.
    script = (
        "import sys, rlm.cli\n"
        "print(sorted(m for m in ('openai', 'aiohttp', 'docker') if m in sys.modules))\n"
        "from rlm import RLM, Batcher, ContainerPool, RunStatus\n"
        "print(RLM.__module__, 'openai' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.splitlines()
    assert out == ["[]", "rlm.core False"]


def test_every_public_name_is_importable_from_rlm() -> None:
    import rlm

    for name in rlm.__all__:
        assert getattr(rlm, name) is not None, name
    assert sorted(rlm.__all__) == sorted(rlm._HOMES)


def test_every_package_is_installed() -> None:
    # setuptools installs only the packages pyproject.toml lists: a new subpackage
    # missing there works in an editable checkout and is absent from a wheel.
    import tomllib

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    present = {
        ".".join([package, *init.parent.relative_to(root).parts])
        for package, root in PACKAGES.items()
        for init in root.rglob("__init__.py")
    }
    assert present - listed == set()
