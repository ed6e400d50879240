"""What importing a module pulls in: the drawing and the explorer share gflnb.chapters.gallery, not each other."""
import ast
import json
import subprocess
import sys

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


def _imports(module: str) -> set[str]:
    """Every gflnb module ``gflnb/chapters/<module>.py`` imports, at its top or inside a function."""
    tree = ast.parse((ROOT / "gflnb" / "chapters" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            package = node.level > 0 or node.module == "gflnb" or (node.module or "").startswith("gflnb.")
            inner = (node.module or "").removeprefix("gflnb").lstrip(".") if package else ""
            found |= {inner.split(".")[0]} if inner else {a.name for a in node.names} if package else set()
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("gflnb.")}
    return found


def test_not_even_a_lazy_import_closes_the_cycle():
    assert "explorer" not in _imports("viz") and "viz" not in _imports("explorer")
    assert not {"viz", "explorer"} & _imports("gallery")
    assert "gallery" in _imports("viz") and "gallery" in _imports("explorer")


def test_the_package_exports_explore_on_first_use():
    assert _loaded_after("import gflnb") & {"gflnb.chapters.explorer", "gflnb.chapters.viz", "cv2", "seaborn"} == set()
    assert "gflnb.chapters.explorer" in _loaded_after("import gflnb; assert 'explore' in gflnb.__all__; gflnb.explore")
    import gflnb
    from gflnb.chapters.explorer import explore
    assert gflnb.explore is explore
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        gflnb.nonexistent
