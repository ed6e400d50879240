"""Run the notebooks with papermill and build the Jupyter Book (``make book``).

    python -m gflnb.book                      # all chapters with default parameters, then the book
    python -m gflnb.book run SRC.py OUT.ipynb -p name value ...   # one notebook, one experiment record
    python -m gflnb.book build                # rebuild the book from already executed notebooks
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["01_quality_focal_loss", "02_distribution_focal_loss", "03_training", "04_coco_evaluation",
             "05_learned_distributions", "06_performance", "07_ablations"]


def execute(src: str | Path, out: str | Path, parameters: Optional[dict[str, Any]] = None,
            cwd: Optional[str | Path] = None, timeout: Optional[int] = 3600) -> Any:
    """Execute a py:percent notebook with papermill (which cannot read .py itself); ``timeout`` is
    per cell, in seconds (None: none)."""
    import jupytext
    import papermill as pm
    src = Path(src)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return pm.execute_notebook(jupytext.read(src), str(out), parameters=parameters or {}, kernel_name="python3",
                               cwd=str(cwd or src.parent), progress_bar=False, execution_timeout=timeout)


_OLD_RECORD = "GFLNB_RECORD "  # the prefix of the line notebooks printed before the record was a display output


def records(nb_path: str | Path) -> list[dict]:
    """The run records (:func:`gflnb.chapters.nbtools.record`) of an executed notebook, in cell order.

    Also reads the ``GFLNB_RECORD {json}`` lines that notebooks executed before the record became a
    display output printed.
    """
    import nbformat

    from .chapters.nbtools import RECORD_MIME
    nb = nbformat.read(str(nb_path), as_version=4)
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") in ("display_data", "execute_result") and RECORD_MIME in o.get("data", {}):
                v = o["data"][RECORD_MIME]
                out.append(json.loads(v) if isinstance(v, str) else json.loads(json.dumps(v)))
            elif o.get("output_type") == "stream":
                out += [json.loads(line[len(_OLD_RECORD):]) for line in o.get("text", "").splitlines()
                        if line.startswith(_OLD_RECORD)]
    return out


def fetch_mathjax(book_dir: Path) -> Path:
    """MathJax 3 from the npm registry into ``book/mathjax_static/mathjax`` (offline rendering)."""
    dest = book_dir / "mathjax_static" / "mathjax"
    if (dest / "tex-chtml.js").exists():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to fetch MathJax for the book (apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", "mathjax@3", "--silent", "--pack-destination", tmp], check=True,
                       stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("mathjax-*.tgz"))
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp, filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(Path(tmp) / "package" / "es5", dest)
    return dest


def build_book(book_dir: str | Path = ROOT / "book", builder: str = "html") -> Path:
    """``jupyter-book build -W -n --keep-going`` on executed notebooks; returns index.html."""
    book_dir = Path(book_dir)
    fetch_mathjax(book_dir)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", "-W", "-n", "--keep-going", "--builder", builder,
           str(book_dir)]
    subprocess.run(cmd, check=True)
    return book_dir / "_build" / "html" / "index.html"


def run_all(book_dir: Path = ROOT / "book", params: Optional[dict[str, dict]] = None) -> dict[str, list[dict]]:
    """Execute every chapter in order into ``book/notebooks/`` (chapter 3's checkpoint feeds 4 and 5)."""
    out_dir = book_dir / "notebooks"
    summary = {}
    for name in NOTEBOOKS:
        t = time.perf_counter()
        print(f"[gflnb.book] executing {name} ...", flush=True)
        out = out_dir / f"{name}.ipynb"
        execute(ROOT / "notebooks" / f"{name}.py", out, (params or {}).get(name), cwd=ROOT / "notebooks")
        summary[name] = records(out)
        print(f"[gflnb.book] {name} done in {time.perf_counter() - t:.0f} s: {json.dumps(summary[name])}", flush=True)
    (out_dir / "records.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gflnb.book")
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="execute one notebook with parameters")
    r.add_argument("src")
    r.add_argument("out")
    r.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    # An experiment's budget is in epochs, so its cells get no wall-clock limit by default: on a busy
    # 2-core machine a sweep point of 1,500 iterations ran past the book's hour and was killed
    r.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: no limit)")
    sub.add_parser("build", help="build the book from executed notebooks")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.cmd == "run":
        import yaml
        params = {k: yaml.safe_load(v) for k, v in a.p}
        execute(a.src, a.out, params, timeout=a.timeout)
        print(json.dumps(records(a.out)))
        return 0
    if a.cmd is None:
        run_all()
    index = build_book()
    print(f"[gflnb.book] done in {time.perf_counter() - t0:.0f} s; open {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
