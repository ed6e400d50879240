"""JupyterLab for the chapters: ``python -m gflnb.lab`` (``make lab``).

The chapters are jupytext py:percent files, and the paired ``.ipynb`` are build products that a
fresh clone lacks. JupyterLab opens a ``.py`` in its text editor unless told otherwise, so this
installs ``jupyter/overrides.json`` (the default viewer of Python files: Jupytext Notebook) as the
environment's JupyterLab settings, ``{sys.prefix}/share/jupyter/lab/settings/overrides.json``.
A double click then opens a chapter as a notebook on the environment's ``python3`` kernel; Open
With -> Editor still opens it as text. User settings, where a user has set their own, win.

    python -m gflnb.lab install    # only write the settings (make setup runs this)
    python -m gflnb.lab [ARGS]     # write them, then jupyter lab notebooks/ [ARGS]
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from .files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ROOT / "jupyter" / "overrides.json"


def settings_path(prefix: Optional[str] = None) -> Path:
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"


def install(prefix: Optional[str] = None) -> Path:
    """Merge the project's overrides into the environment's (other plugins' settings are kept)."""
    dest = settings_path(prefix)
    ours = json.loads(OVERRIDES.read_text())
    merged = json.loads(dest.read_text()) if dest.exists() else {}
    for plugin, values in ours.items():
        current = merged.setdefault(plugin, {})
        for key, value in values.items():
            current[key] = {**current.get(key, {}), **value} if isinstance(value, dict) else value
    return atomic_write_text(dest, json.dumps(merged, indent=2) + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dest = install()
    if argv[:1] == ["install"]:
        print(f"JupyterLab settings: {dest}")
        return 0
    exe = Path(sys.executable).with_name("jupyter-lab")
    os.chdir(ROOT)
    os.execv(str(exe), [str(exe), "notebooks", *argv])


if __name__ == "__main__":
    raise SystemExit(main())
