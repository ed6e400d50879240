"""``gflnb sweep --dry-run GRID``: every point's command and state, and the grid checked, running nothing.

The checks are the ones a sweep would otherwise fail on hours in, one point at a time: the preset
exists; every variant's overrides are fields of ``GFLConfig`` with valid values (the config each
point would build); every notebook parameter is one the notebook declares (papermill would inject
an unknown one silently); the data exist, or, for the synthetic set, will be generated.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from .sweep import ROOT, Grid, Point, _rel, command, point_record

DATA_PATHS = (("train_ann", "file"), ("train_images", "dir"), ("val_ann", "file"), ("val_images", "dir"))


def notebook_parameters(notebook: Path) -> set[str]:
    """The names the notebook's ``parameters`` cell assigns (a py:percent source)."""
    text = notebook.read_text()
    m = re.search(r'^# %% tags=\["parameters"\]\n(.*?)(?=^# %%)', text, re.M | re.S)
    return set(re.findall(r"^([A-Za-z_]\w*)\s*=", m.group(1), re.M)) if m else set()


def _data(grid: Grid) -> tuple[list[str], list[str]]:
    """(lines saying where the data are, problems)."""
    from ..data.synth import LATEST_VERSION, dataset_paths, synth_root
    par, base = grid.parameters, grid.notebook.parent  # the notebook runs in its own folder
    lines, problems = [], []
    if par.get("train_ann"):
        for key, kind in DATA_PATHS:
            if not par.get(key):
                problems.append(f"{key} is not set (a COCO-format grid needs all of "
                                f"{', '.join(k for k, _ in DATA_PATHS)})")
                continue
            path = (base / str(par[key])).resolve()
            ok = path.is_file() if kind == "file" else path.is_dir()
            lines.append(f"{key}: {path} ({'exists' if ok else 'MISSING'})")
            if not ok:
                problems.append(f"{key}: {path} is not an existing {'file' if kind == 'file' else 'folder'}")
        return lines, problems
    root = (base / synth_root(par.get("data_version", LATEST_VERSION), par.get("data_root"))).resolve()
    there = all(p.exists() for p in dataset_paths(root, "train") + dataset_paths(root, "val"))
    lines.append(f"data: synthetic set at {root} ({'exists' if there else 'will be generated'}: "
                 f"{par.get('num_train', 1000)} train, {par.get('num_val', 200)} val images, "
                 f"seed {par.get('data_seed', 0)}, version {par.get('data_version', LATEST_VERSION)})")
    return lines, problems


def check_grid(grid: Grid) -> tuple[list[str], list[str]]:
    """(lines describing the grid's data, problems); no problems: the grid can run."""
    from ..config import PRESETS, get_config
    problems: list[str] = []
    preset = grid.parameters.get("config", "gfl_cpu_demo")
    if preset not in PRESETS:
        problems.append(f"config {preset!r} is no preset (gflnb.config.PRESETS: {', '.join(PRESETS)})")
    known = notebook_parameters(grid.notebook)
    for name, v in grid.variants.items():
        over = {**(grid.parameters.get("overrides") or {}), **(v.get("overrides") or {})}
        if preset in PRESETS:
            try:
                get_config(preset, **over)
            except Exception as e:  # ConfigError: an unknown field or a bad value
                problems.append(f"variant {name!r}: {e}")
        unknown = sorted(set(v.get("parameters") or {}) - known)
        if unknown:
            problems.append(f"variant {name!r}: {', '.join(unknown)} not a parameter of {grid.notebook.name}")
    unknown = sorted(set(grid.parameters) - known)
    if unknown:
        problems.append(f"parameters {', '.join(unknown)} not parameters of {grid.notebook.name}")
    lines, data_problems = _data(grid)
    return lines, problems + data_problems


def point_state(grid: Grid, p: Point) -> str:
    """``done``, ``failed``, ``missing``, or ``running`` with what this host can tell of its job."""
    from .executors import alive
    cmd = command(grid, p)
    if point_record(grid, p, "ok", cmd) is not None:
        return "done"
    run = point_record(grid, p, "running", cmd)
    if run is not None:
        live = alive(run)
        job = f"{run.get('executor')} job {run.get('job_id') or run.get('pid')}"
        return f"running ({job}{'' if live else ', dead: will rerun' if live is False else ', unknown here'})"
    return "failed" if point_record(grid, p, "failed", cmd) is not None else "missing"


def dry_run(grid: Grid, points: Sequence[Point]) -> tuple[list[str], list[str]]:
    """(the lines to print: one per point with its state and command, then the data; problems)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sacct missing on this host: 'unknown here' says it
        out = [f"{p.id} [{point_state(grid, p)}]\n  {command(grid, p)}" for p in points]
    lines, problems = check_grid(grid)
    out += lines
    out.append(f"{len(points)} points, {grid.threads} threads each; out: {_rel(grid.out, ROOT)}")
    return out, problems


def parse_sets(items: Optional[Sequence[str]]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as notebook parameters; values are YAML (``epochs=2`` is an int)."""
    import yaml
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. train_ann=/data/coco/annotations/x.json")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out
