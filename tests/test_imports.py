"""What importing a module pulls in: the drawing and the explorer share gflnb.chapters.gallery, not each other."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gflnb.book import ROOT

WATCHED = ("gflnb.chapters.viz", "gflnb.chapters.explorer", "gflnb.chapters.gallery", "cv2", "seaborn")


def _loaded_after(statement: str) -> set[str]:
    """The WATCHED modules in ``sys.modules`` after ``statement`` runs in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {WATCHED!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module, absent", [("gflnb.chapters.viz", "gflnb.chapters.explorer"), ("gflnb.chapters.explorer", "gflnb.chapters.viz")])
def test_viz_and_explorer_do_not_import_each_other(module, absent):
    loaded = _loaded_after(f"import {module}")
    assert module in loaded and "gflnb.chapters.gallery" in loaded
    assert absent not in loaded


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of gflnb by dotted name: its file, and whether it is a package's ``__init__``."""
    found = {}
    for f in sorted((ROOT / "gflnb").rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (f, is_package)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the gflnb modules it imports, read with ``ast`` from every statement (at the top or
    inside a function): relative imports resolved against the module's package, and ``from pkg import
    name`` taken as the module ``pkg.name`` where there is one, else as ``pkg``. A module's parent
    packages, which Python imports first, are not counted: they are not what the module asked for."""
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name.split(".") if is_package else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x, from ..data.coco import y
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one cycle through
    them, ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:  # a path back to the start within the component: a cycle to name
        start = min(component)
        path, seen = [start], {start}
        while True:
            nxt = sorted(graph[path[-1]] & component)
            if start in nxt and len(path) > 1:
                cycles.append(path + [start])
                break
            step = next((w for w in nxt if w not in seen), None)
            if step is None:  # dead end inside the component: back up
                path.pop()
                if not path:
                    cycles.append(sorted(component) + [min(component)])
                    break
                continue
            path.append(step)
            seen.add(step)
    return cycles


def test_no_module_of_the_package_imports_itself_through_others():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_and_names_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": set()}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    g = import_graph()  # what it reads: lazy imports, relative ones, and modules imported from packages
    assert "gflnb.model.fuse" in g["gflnb.model.detector"]  # inside GFL.inference_net
    assert "gflnb.study.tracking" in g["gflnb.cli"]  # ``from .study.tracking import ...`` in a function
    assert "gflnb.numerics.portable" in g["gflnb"]  # ``from .numerics import portable``


def test_not_even_a_lazy_import_joins_the_drawing_and_the_explorer():
    g = import_graph()
    viz, explorer, gallery = "gflnb.chapters.viz", "gflnb.chapters.explorer", "gflnb.chapters.gallery"
    assert explorer not in g[viz] and viz not in g[explorer]
    assert not {viz, explorer} & g[gallery]
    assert gallery in g[viz] and gallery in g[explorer]


def test_the_package_exports_explore_on_first_use():
    assert _loaded_after("import gflnb") & {"gflnb.chapters.explorer", "gflnb.chapters.viz", "cv2", "seaborn"} == set()
    assert "gflnb.chapters.explorer" in _loaded_after("import gflnb; assert 'explore' in gflnb.__all__; gflnb.explore")
    import gflnb
    from gflnb.chapters.explorer import explore
    assert gflnb.explore is explore
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        gflnb.nonexistent
