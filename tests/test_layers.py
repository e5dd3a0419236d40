"""The house rules, checked: imports point down the layers only, and no module imports itself in a circle.

The layers are declared in ``pyproject.toml`` (``[tool.importlinter]``) and
drawn in ``docs/design.md``. Imports inside functions count as much as those
at the top of a file: a lazy import does not hide an upward dependency.
"""

from __future__ import annotations

import os
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_down_the_layers_only():
    cwd = os.getcwd()
    os.chdir(ROOT)  # lint-imports reads pyproject.toml from the working directory
    try:
        assert lint_imports(no_cache=True) == 0, "an import points up a layer: see the contract report above"
    finally:
        os.chdir(cwd)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every module that can reach itself through imports, with one such path."""
    found = []
    for start in sorted(graph.modules):
        for nxt in graph.find_modules_directly_imported_by(start):
            path = graph.find_shortest_chain(importer=nxt, imported=start)
            if path:
                found.append([start, *path])
                break
    return found


def test_no_module_imports_itself_in_a_circle():
    graph = grimp.build_graph("medadapt", cache_dir=None)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_the_cycle_check_can_fail(tmp_path, monkeypatch):
    """The check above sees a cycle when there is one (also one made by an import inside a function)."""
    pkg = tmp_path / "circle_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cycles = _cycles(grimp.build_graph("circle_pkg", cache_dir=None))
    assert cycles and {"circle_pkg.a", "circle_pkg.b"} <= set(cycles[0])
