"""Parameterized experiments: one papermill-executed notebook per (variant, seed), one table row each.

    gflnb sweep experiments/ablations/grid.yaml [--jobs N] [--only VARIANT ...] [--seeds 0 1]

A grid file names the notebook, the parameters every point shares, the variants (config overrides,
and optionally notebook parameters of their own, e.g. a longer ``epochs``) and the seeds. Every
point runs as a shell command of its own, the one its table row records, so a row is reproduced
by running its ``command`` from the repository root. The command pins the torch
thread count, since the thread count changes how sums are split and so the trained model.

Under ``out`` (the grid's folder by default):
  results.csv        one row per point, in grid order (AP in %; no timings, so a resumed sweep's
                     table equals an uninterrupted one's)
  records/ID.json    the point's small record: parameters, metrics, status, command, wall time,
                     machine, and for quality variants the background-anchor summary of the
                     paper's Fig. 2 (chapter 7), computed right after training in the point's own
                     task; while the point runs, status ``running`` with its executor, job or
                     task id, host, pid and start time
  evals/ID.npz       where the grid has a test set (chapter 3's num_test): the point's detections on it
                     matched image by image (gflnb/study/imagewise.py), for the bootstrap over images
  runs/ID/           checkpoints, log.jsonl, metrics.json (git-ignored)
  notebooks/ID.ipynb the executed notebook, the experiment's full record (git-ignored)

A point whose record says ``ok`` with the same command is skipped, so a killed sweep resumes; a
failed point is recorded with its error and the sweep goes on. A ``running`` one is left alone
while its job lives and rerun once it has died (gflnb/study/executors.py: where points run, on this
machine, a Dask cluster or Slurm, and how each tells a dead job).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tqdm import tqdm

from ..engine.evaluate import AP_NAMES
from ..files import atomic_write_text
from .executors import SlurmOptions

ROOT = Path(__file__).resolve().parents[2]  # the repository: gflnb/<role>/<module>.py
AP_KEYS = AP_NAMES  # the COCO APs a record's metrics hold (gflnb/engine/evaluate.py)
COLUMNS = ("variant", "seed", *AP_KEYS, "test_AP", "status", "error", "iterations", "command", "metrics_path",
           "record_path")
# Variants whose records carry the background-anchor summary of the paper's Fig. 2 (chapter 7);
# qfl_dirac is the joint score on the separate branches' (Dirac) box
BACKGROUND_VARIANTS = ("gfl", "iou", "centerness", "dgqp", "qfl_dirac")
# Notebook parameters a variant may not set: the sweep sets the first three per point, and the data
# ones are generated once for every point before they start
RESERVED_PARAMETERS = ("seed", "work_dir", "overrides", "data_root", "num_train", "num_val", "data_seed",
                       "data_version", "train_ann", "train_images", "val_ann", "val_images", "num_test", "test_seed",
                       "test_ann", "test_images")


class GridError(ValueError):
    """A grid file that cannot describe a sweep."""


@dataclass(frozen=True)
class Point:
    variant: str
    seed: int
    overrides: dict[str, Any]  # config fields
    parameters: dict[str, Any] = field(default_factory=dict)  # notebook parameters over the grid's

    @property
    def id(self) -> str:
        return f"{self.variant}__s{self.seed}"


@dataclass
class Grid:
    path: Path
    notebook: Path  # absolute
    out: Path  # absolute
    parameters: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    seeds: list[int]
    threads: int = 1
    jobs: int = 2
    background_images: int = 50
    points: list[Point] = field(default_factory=list)

    def select(self, only: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None) -> list[Point]:
        unknown = sorted(set(only or ()) - set(self.variants))
        if unknown:
            raise GridError(f"{self.path}: no variant {', '.join(unknown)} (it has {', '.join(self.variants)})")
        return [p for p in self.points if (not only or p.variant in only) and (seeds is None or p.seed in seeds)]


def _rel(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when both lie in the repository, else absolute (runs anywhere)."""
    try:
        path.resolve().relative_to(ROOT)
        start.resolve().relative_to(ROOT)
    except ValueError:
        return str(path.resolve())
    return os.path.relpath(path.resolve(), start.resolve())


def read_grid_file(path: str | os.PathLike) -> dict[str, Any]:
    """The grid file's mapping as written, with ``variants_from`` resolved: a grid without variants of
    its own takes those of the grid file it names (two scales of one design); raises :class:`GridError`."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file not found: {path}")
    try:
        g = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise GridError(f"{path}: not YAML ({e})") from None
    if not isinstance(g, dict):
        raise GridError(f"{path}: expected a mapping with notebook, variants and seeds")
    if "variants_from" in g and "variants" not in g:
        src = path.parent / str(g["variants_from"])
        try:
            g["variants"] = yaml.safe_load(src.read_text())["variants"]
        except (OSError, yaml.YAMLError, TypeError, KeyError):
            raise GridError(f"{path}: variants_from: {src} is no grid file with variants") from None
    return g


def load_grid(path: str | os.PathLike, sets: Optional[dict[str, Any]] = None) -> Grid:
    """The grid in ``path``; ``sets`` overrides its notebook parameters (``gflnb sweep --set``)."""
    path = Path(path)
    g = read_grid_file(path)
    missing = [k for k in ("notebook", "variants", "seeds") if k not in g]
    if missing:
        raise GridError(f"{path}: missing {', '.join(missing)}")
    if sets:
        g["parameters"] = {**(g.get("parameters") or {}), **sets}
    nb = (ROOT / g["notebook"]).resolve()
    if not nb.is_file():
        raise GridError(f"{path}: notebook {g['notebook']} not found")
    out = Path(g.get("out") or path.parent)
    out = (out if out.is_absolute() else ROOT / out).resolve()
    variants = g["variants"]
    if not isinstance(variants, dict) or not variants:
        raise GridError(f"{path}: variants must be a non-empty mapping of name -> {{overrides: ...}}")
    for name, v in variants.items():
        if not isinstance(v, dict) or not isinstance(v.get("overrides", {}), dict):
            raise GridError(f"{path}: variant {name!r} needs a mapping with 'overrides' (config fields)")
        if "__" in str(name) or "/" in str(name) or " " in str(name):
            raise GridError(f"{path}: variant name {name!r} may not contain '__', '/' or spaces")
        if not isinstance(v.get("parameters", {}), dict):
            raise GridError(f"{path}: variant {name!r}: 'parameters' must be a mapping of notebook parameters")
        reserved = sorted(set(v.get("parameters") or {}) & set(RESERVED_PARAMETERS))
        if reserved:
            raise GridError(f"{path}: variant {name!r} may not set {', '.join(reserved)} (config fields go in "
                            "'overrides'; seeds and data are the grid's)")
    seeds = g["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise GridError(f"{path}: seeds must be a non-empty list of integers")
    grid = Grid(path, nb, out, dict(g.get("parameters") or {}), variants, seeds, int(g.get("threads", 1)),
                int(g.get("jobs", 2)), int(g.get("background_images", 50)))
    grid.points = [Point(name, s, dict(v.get("overrides") or {}), dict(v.get("parameters") or {}))
                   for name, v in variants.items() for s in seeds]
    return grid


def _python() -> str:
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(ROOT))  # .venv/bin/python: the command reads the same from any clone
    except ValueError:
        return str(exe)


def point_parameters(grid: Grid, p: Point) -> dict[str, Any]:
    """The grid's notebook parameters with the variant's own over them (before seed and work_dir)."""
    return {**grid.parameters, **p.parameters}


def command(grid: Grid, p: Point) -> str:
    """The shell command, run from the repository root, that produces point ``p``'s row alone."""
    params = {**point_parameters(grid, p), "seed": p.seed,
              "overrides": {**grid.parameters.get("overrides", {}), **p.overrides},
              "work_dir": _rel(grid.out / "runs" / p.id, grid.notebook.parent)}
    args = [f"OMP_NUM_THREADS={grid.threads}", _python(), "-m", "gflnb.book", "run", _rel(grid.notebook, ROOT),
            _rel(grid.out / "notebooks" / f"{p.id}.ipynb", ROOT)]
    for k, v in params.items():
        args += ["-p", k, json.dumps(v, sort_keys=True) if not isinstance(v, str) else v]
    return args[0] + " " + shlex.join(args[1:])


def metrics_path(grid: Grid, p: Point) -> Path:
    return grid.out / "runs" / p.id / "metrics.json"


def record_path(grid: Grid, p: Point) -> Path:
    return grid.out / "records" / f"{p.id}.json"


def evals_path(grid: Grid, p: Point) -> Path:
    return grid.out / "evals" / f"{p.id}.npz"


def _write_matches(grid: Grid, p: Point, test: dict) -> None:
    """The point's test-set detections reduced to what AP needs image by image (committed, where the
    detections themselves stay in the git-ignored run folder)."""
    from pycocotools.coco import COCO

    from .imagewise import match_images
    ann = (grid.notebook.parent / test["ann"]).resolve()  # as the notebook read it, from its folder
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
    results = json.loads((grid.out / "runs" / p.id / "test_results.json").read_text())
    match_images(gt, results).save(evals_path(grid, p))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC = re.compile(r"^\s*((?:\w+\.)*[A-Z]\w*): \S")  # "TrainingDiverged: non-finite ...", "ValueError: ..."


def failure_line(output: str) -> str:
    """The line of a failed point's output that says why: the last ``Name: message`` of the
    innermost traceback (papermill's own wrapper line carries no message, so it never wins), else the
    last line that mentions an error, else the last line."""
    lines = [_ANSI.sub("", ln).strip() for ln in output.splitlines()]
    lines = [ln for ln in lines if ln]
    exc = [ln for ln in lines if _EXC.match(ln) and not ln.startswith("papermill.exceptions.")]
    if exc:
        return exc[-1]
    return next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")


def point_record(grid: Grid, p: Point, status: Optional[str] = None, cmd: Optional[str] = None) -> Optional[dict]:
    """The point's record where it is this grid's: readable, and with the command the grid gives the point
    (``cmd``, when the caller has it already); a record of another grid (other parameters) is not this
    point's result. With ``status``, only a record in that state: ``ok`` (done), ``running`` (a job in
    flight, or one that died), ``failed``."""
    try:
        rec = json.loads(record_path(grid, p).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("command") != (command(grid, p) if cmd is None else cmd):
        return None
    return rec if status is None or rec.get("status") == status else None


def _claim(grid: Grid, p: Point, executor: str, job_id: str) -> None:
    """Record a job the driver has just submitted (queued, perhaps for hours) as ``running``, unless
    the job has already started and recorded itself."""
    cmd = command(grid, p)
    run = point_record(grid, p, "running", cmd)
    if run is not None and str(run.get("job_id")) == str(job_id):
        return
    rec = dict(variant=p.variant, seed=p.seed, command=cmd, status="running", executor=executor, job_id=job_id,
               submitted=time.strftime("%Y-%m-%dT%H:%M:%S%z"), starts=int((run or {}).get("starts", 0)))
    if executor == "submitit-local":  # its job id is its process's pid, on this host
        rec.update(host=socket.gethostname(), pid=int(job_id))
    atomic_write_text(record_path(grid, p), json.dumps(rec, indent=1))


def _lost(grid: Grid, p: Point, e: BaseException) -> dict:
    """The record of a point whose task never came back (its worker or job died every time)."""
    rec = dict(variant=p.variant, seed=p.seed, overrides=p.overrides, command=command(grid, p),
               parameters=point_parameters(grid, p), metrics_path=_rel(metrics_path(grid, p), ROOT), status="failed",
               error=f"lost: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500])
    atomic_write_text(record_path(grid, p), json.dumps(rec, indent=1))
    return rec


def _background(grid: Grid, p: Point) -> Optional[dict]:
    """The Fig. 2 summary of the point's checkpoint on the validation set (None where it does not apply)."""
    if p.variant not in BACKGROUND_VARIANTS:
        return None
    import torch

    from ..chapters.analysis import anchor_scores, background_summary, load_model
    from ..data.coco import CocoDetection
    from ..data.synth import LATEST_VERSION, dataset_paths, synth_root
    ck = grid.out / "runs" / p.id / "latest.pth"
    par, base = point_parameters(grid, p), grid.notebook.parent  # paths as the notebook reads them
    if par.get("val_ann"):
        val_ann, val_img = (base / par["val_ann"]).resolve(), (base / par["val_images"]).resolve()
    else:
        root = synth_root(par.get("data_version", LATEST_VERSION), par.get("data_root"))
        val_ann, val_img = dataset_paths((base / root).resolve(), "val")
    model = load_model(ck)
    ds = CocoDetection(val_ann, val_img, model.cfg, train=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(grid.threads)  # the point's thread count, whichever process runs it
    try:
        device = par["device"] if str(par.get("device", "")).startswith("cuda") else "cpu"  # COCO: on the GPU
        return background_summary(anchor_scores(model, ds, max_images=grid.background_images, device=device))
    finally:
        torch.set_num_threads(threads)


def run_point(grid: Grid, p: Point) -> dict:
    """Execute one point's command, then (quality variants) its Fig. 2 background pass, in this process,
    wherever it runs (a thread here, a Dask worker, a Slurm job), and write its record; never raises
    for a failed run. While the command runs, the record says ``running`` (gflnb/study/executors.py)."""
    from .executors import die_with_parent, process_started, task_identity
    cmd = command(grid, p)
    env = {**os.environ, "OMP_NUM_THREADS": str(grid.threads)}
    t0 = time.perf_counter()
    where = task_identity()
    starts = int((point_record(grid, p, "running", cmd) or {}).get("starts", 0)) + 1  # > 1: earlier starts died
    rec: dict[str, Any] = dict(variant=p.variant, seed=p.seed, overrides=p.overrides, command=cmd,
                               parameters=point_parameters(grid, p), metrics_path=_rel(metrics_path(grid, p), ROOT))
    mp = metrics_path(grid, p)
    if mp.exists():
        mp.unlink()  # a metrics file from an earlier, killed attempt must not pass for this one's
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=die_with_parent)
    atomic_write_text(record_path(grid, p), json.dumps(
        {**rec, "status": "running", **where, "pid": proc.pid, "pid_started": process_started(proc.pid),
         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "starts": starts}, indent=1, default=str))
    stdout, stderr = proc.communicate()
    rec.update(wall_s=round(time.perf_counter() - t0, 1), executor=where["executor"], job_id=where["job_id"],
               starts=starts)
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {failure_line(stderr + stdout)[:500]}")
        m = json.loads(mp.read_text())
        rec.update(status="ok", error="", iterations=m["iterations"], metrics=m.get("metrics", {}),
                   machine=m.get("machine"), train_minutes=m.get("train_minutes"),
                   # the learning curve: AP (and its siblings) after every eval_every epochs
                   eval_history=[{k: e[k] for k in ("epoch", "iter", *AP_KEYS) if k in e}
                                 for e in m.get("eval_history", [])])
        if "test" in m:  # the held-out set's AP, and its detections image by image for the bootstrap
            rec.update(test_metrics=m["test"]["metrics"], test_images=m["test"]["num_images"])
            _write_matches(grid, p, m["test"])
    except Exception as e:  # a failed point is recorded and the sweep goes on
        rec.update(status="failed", error=str(e).replace("\n", " ")[:500])
    if rec["status"] == "ok" and p.variant in BACKGROUND_VARIANTS:
        try:  # here, not in the driver: a point on a worker is self-contained
            rec["background"] = _background(grid, p)
        except Exception as e:  # the row stands without it; add_background, the driver's repair pass, retries
            import warnings
            warnings.warn(f"{p.id}: no background summary ({e})")
    atomic_write_text(record_path(grid, p), json.dumps(rec, indent=1, default=str))
    return rec


def add_background(grid: Grid, points: Sequence[Point]) -> int:
    """Add the Fig. 2 summary to the ok records of quality variants that lack it (from each point's
    checkpoint): the repair pass for records whose point could not compute it (run_point does), and
    so that an analysis change never reruns training. Returns how many."""
    import warnings
    n = 0
    for p in points:
        rp = record_path(grid, p)
        if p.variant not in BACKGROUND_VARIANTS or not rp.exists():
            continue
        rec = json.loads(rp.read_text())
        if rec.get("status") != "ok" or "background" in rec:
            continue
        try:
            rec["background"] = _background(grid, p)
        except Exception as e:  # the row stands without it; the chapter says what is missing
            warnings.warn(f"{p.id}: no background summary ({e})")
            continue
        atomic_write_text(rp, json.dumps(rec, indent=1, default=str))
        n += 1
    return n


def _row(grid: Grid, p: Point, rec: Optional[dict]) -> dict:
    row = dict.fromkeys(COLUMNS, "")
    row.update(variant=p.variant, seed=p.seed, command=command(grid, p),
               metrics_path=_rel(metrics_path(grid, p), ROOT), record_path=_rel(record_path(grid, p), ROOT))
    if rec is None:
        row["status"] = "missing"
        return row
    row.update(status=rec["status"], error=rec.get("error", ""), iterations=rec.get("iterations", ""))
    for k in AP_KEYS:
        v = rec.get("metrics", {}).get(k)
        row[k] = "" if v is None else f"{v:.2f}"
    v = rec.get("test_metrics", {}).get("AP")
    row["test_AP"] = "" if v is None else f"{v:.2f}"
    return row


def write_table(grid: Grid, points: Sequence[Point]) -> Path:
    """``results.csv`` from the records of ``points``, in grid order (atomically)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    w.writeheader()
    for p in points:
        w.writerow(_row(grid, p, point_record(grid, p)))
    path = grid.out / "results.csv"
    atomic_write_text(path, buf.getvalue())
    return path


# A sink of the records: called with each finished point's record as it comes in, and once at the end
# with None (every record of the grid); gflnb/study/tracking.py's mlflow_sink is one (gflnb sweep --mlflow)
Sink = Callable[[Grid, Optional[Sequence[dict]]], None]


def run_sweep(grid_file: str | os.PathLike, jobs: Optional[int] = None, only: Optional[Sequence[str]] = None,
              seeds: Optional[Sequence[int]] = None, progress: bool = True, sink: Optional[Sink] = None,
              executor: str = "local", slurm: Optional[SlurmOptions] = None,
              sets: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Run every point not yet done, ``jobs`` at a time, on ``executor`` (gflnb/study/executors.py: local,
    dask://HOST:PORT, slurm, submitit-local); returns counts and the table's path.
    ``sink``: also hand it each finished point's record, and at the end all of them (:data:`Sink`)."""
    from .executors import alive, drive, open_backend
    grid = load_grid(grid_file, sets)
    points = grid.select(only, seeds)
    every = grid.select()  # the table always covers the whole grid: --only reruns rows, never drops the rest
    backend = open_backend(executor, jobs, grid.out / "submitit", slurm or SlurmOptions(), grid.jobs)
    todo, elsewhere = [], 0
    for p in points:
        cmd = command(grid, p)
        if point_record(grid, p, "ok", cmd) is not None:
            continue
        run = point_record(grid, p, "running", cmd)
        if run is not None and (live := alive(run, backend.client)) is not False:
            elsewhere += 1  # in flight (another driver's, or one this driver cannot check): never twice
            if live is None:
                import warnings
                warnings.warn(f"{p.id}: cannot tell whether its {run.get('executor')} job {run.get('job_id')} still "
                              f"runs; left alone (delete {_rel(record_path(grid, p), ROOT)} to rerun it)")
            continue
        todo.append(p)  # not run, failed, or its job has died
    skipped = len(points) - len(todo) - elsewhere
    jobs = backend.max_in_flight or len(todo)
    t0 = time.perf_counter()
    if todo and "data_root" in grid.parameters and not grid.parameters.get("train_ann"):
        # once, before the points start side by side: each would otherwise generate the same set
        from ..data.synth import LATEST_VERSION, TEST_SEED, ensure_dataset, ensure_test_set, synth_root
        par = grid.parameters
        version = par.get("data_version", LATEST_VERSION)
        ensure_dataset((grid.notebook.parent / synth_root(version, par["data_root"])).resolve(),
                       par.get("num_train", 1000), par.get("num_val", 200), seed=par.get("data_seed", 0),
                       progress=progress, version=version)
        if par.get("num_test") and not par.get("test_ann"):  # the held-out set, likewise once
            ensure_test_set(version, par["num_test"], par.get("test_seed", TEST_SEED), grid.notebook.parent,
                            progress)
    failed = 0
    lock = threading.Lock()
    bar = tqdm(total=len(points), initial=skipped, desc="sweep", unit="run", disable=not progress,
               dynamic_ncols=True)
    try:
        for rec in drive(backend, run_point, grid, todo, _claim, _lost):
            with lock:
                failed += rec["status"] != "ok"
                write_table(grid, every)  # after every point: a killed sweep leaves its table current
                if sink is not None:
                    sink(grid, [rec])
                ap = rec.get("metrics", {}).get("AP")
                bar.set_postfix_str(f"{rec['variant']} s{rec['seed']}: " +
                                    (f"AP {ap:.1f}" if rec["status"] == "ok" else "failed"))
                bar.update(1)
    finally:
        backend.close()
    bar.close()
    summarized = add_background(grid, points)
    table = write_table(grid, every)
    if sink is not None:  # every record, with the background summaries added since
        sink(grid, None)
    summary = dict(points=len(points), ran=len(todo), skipped=skipped, failed=failed, summarized=summarized,
                   wall_s=round(time.perf_counter() - t0, 1), jobs=jobs, table=_rel(table, ROOT),
                   running=elsewhere, executor=executor)
    atomic_write_text(grid.out / "sweep.json", json.dumps(summary, indent=1))
    return summary
