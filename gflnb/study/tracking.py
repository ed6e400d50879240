"""A sweep's points as MLflow runs, in a local store beside its table: a sink of the records.

    gflnb sweep GRID --mlflow          # imports each point as it finishes, and all of them at the end
    gflnb mlflow-import OUT_OR_GRID    # imports a sweep's committed records, running nothing
    mlflow ui --backend-store-uri sqlite:///experiments/ablations/mlflow.db

The store is ``OUT/mlflow.db`` (SQLite, no server) with artifacts under ``OUT/mlartifacts``, one
experiment named after the folder. ``records/ID.json`` and ``results.csv`` stay the source of
truth: the store can be deleted and imported again at any time. One run per point (run name = the
point's id), holding

  params     variant, seed, command, overrides (as JSON and one ``overrides.KEY`` each) and the
             notebook parameters (``parameters.KEY``)
  metrics    AP, AP50, AP75, APs, APm, APl (in %, as results.csv), iterations, train_minutes,
             wall_s; and the learning curve ``eval/AP``, ``eval/AP50``, ... with step = epoch
             (the record's ``eval_history``)
  artifacts  the record (``ID.json``) and the run's ``metrics.json`` where the run folder has it
  tags       ``gflnb.point_id``, ``gflnb.record_sha256`` (the record's content), ``gflnb.status``

Importing is idempotent: a point whose active run carries the record's hash is skipped, and a
changed record (a rerun, or the Fig. 2 summary added after the runs) replaces its point's run
(the old one is deleted, as ``mlflow gc`` can then purge). Records still ``running`` (or of
another status that is not a result) are not imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from ..engine.evaluate import AP_NAMES
from .sweep import Grid, Point, load_grid, point_record

TAG_POINT = "gflnb.point_id"
TAG_HASH = "gflnb.record_sha256"
TAG_STATUS = "gflnb.status"
IMPORTED_STATUSES = ("ok", "failed")  # a record in any other state (running, ...) is not a result yet
_SCALARS = ("iterations", "train_minutes", "wall_s")


class TrackingError(RuntimeError):
    """MLflow is missing, or the folder holds no sweep."""


def store_uri(out: Path) -> str:
    """The tracking URI of the sweep output ``out``: ``sqlite:////abs/out/mlflow.db``."""
    return f"sqlite:///{(Path(out).resolve() / 'mlflow.db')}"


def require_mlflow() -> Any:
    """The ``mlflow`` module, or one clear error naming the extra that installs it."""
    try:
        import mlflow
    except ImportError:
        raise TrackingError("MLflow logging needs the mlflow package: pip install -e '.[track]'") from None
    return mlflow


def record_hash(rec: dict) -> str:
    """The record's content (key order and formatting aside), as the sweep writes it (``default=str``)."""
    return hashlib.sha256(json.dumps(rec, sort_keys=True, default=str).encode()).hexdigest()


def point_id(rec: dict) -> str:
    return Point(str(rec["variant"]), int(rec["seed"]), {}).id


def resolve_sweep(grid_or_out: Union[Grid, str, os.PathLike]) -> tuple[Path, Optional[Grid]]:
    """The sweep's output folder, and its grid when given one (a :class:`Grid` or a grid file)."""
    if isinstance(grid_or_out, Grid):
        return grid_or_out.out, grid_or_out
    path = Path(grid_or_out)
    if path.is_file():
        grid = load_grid(path)
        return grid.out, grid
    if not (path / "records").is_dir():
        raise TrackingError(f"{path}: neither a grid file nor a sweep output folder (no records/ in it)")
    return path.resolve(), None


def sweep_records(out: Path, grid: Optional[Grid] = None) -> list[dict]:
    """Every record of the sweep: a grid's points whose record has the grid's command (as its table
    counts them), or, without a grid, every ``records/*.json`` of the folder."""
    if grid is not None:
        return [rec for p in grid.select() if (rec := point_record(grid, p)) is not None]
    return [json.loads(f.read_text()) for f in sorted((out / "records").glob("*.json"))]


def _experiment(client: Any, out: Path) -> str:
    name = out.name
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=(out / "mlartifacts").resolve().as_uri(),
                                    tags={"gflnb.out": str(out)})


def _existing(client: Any, exp_id: str) -> dict[str, list[tuple[str, str]]]:
    """The active runs of the experiment as point id -> [(run id, record hash)]."""
    runs: dict[str, list[tuple[str, str]]] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        for r in page:
            runs.setdefault(r.data.tags.get(TAG_POINT, ""), []).append((r.info.run_id, r.data.tags.get(TAG_HASH, "")))
        token = page.token
        if not token:
            return runs


def _params(rec: dict) -> dict[str, str]:
    over = rec.get("overrides") or {}
    params = dict(variant=rec["variant"], seed=rec["seed"], command=rec.get("command", ""),
                  overrides=json.dumps(over, sort_keys=True))
    params.update({f"overrides.{k}": v for k, v in over.items()})
    params.update({f"parameters.{k}": v for k, v in (rec.get("parameters") or {}).items()})
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in params.items()}


def _metrics(rec: dict, now_ms: int) -> list:
    """The final APs (and counts) at step 0, and the learning curve at step = epoch."""
    from mlflow.entities import Metric
    final = {**{k: v for k, v in (rec.get("metrics") or {}).items() if k in AP_NAMES},
             **{k: rec[k] for k in _SCALARS if isinstance(rec.get(k), (int, float))}}
    out = [Metric(k, float(v), now_ms, 0) for k, v in final.items() if v is not None]
    for e in rec.get("eval_history") or []:
        out += [Metric(f"eval/{k}", float(e[k]), now_ms, int(e["epoch"])) for k in AP_NAMES if k in e]
    return out


def _log_run(client: Any, exp_id: str, out: Path, rec: dict, digest: str) -> str:
    """One new run holding ``rec``; returns its id."""
    import time

    from mlflow.entities import Param, RunTag
    pid = point_id(rec)
    run = client.create_run(exp_id, run_name=pid, tags={TAG_POINT: pid, TAG_HASH: digest,
                                                        TAG_STATUS: str(rec["status"])})
    rid = run.info.run_id
    try:
        tags = [RunTag("gflnb.error", str(rec["error"])[:5000])] if rec.get("error") else []
        metrics = _metrics(rec, int(time.time() * 1000))
        params = [Param(k, v) for k, v in _params(rec).items()]
        for i in range(0, max(len(metrics), len(params), 1), 100):  # log_batch takes at most 100 params
            client.log_batch(rid, metrics=metrics[i:i + 100], params=params[i:i + 100], tags=tags if i == 0 else [])
        with tempfile.TemporaryDirectory() as tmp:
            rp = Path(tmp) / f"{pid}.json"
            rp.write_text(json.dumps(rec, indent=1, default=str))
            client.log_artifact(rid, str(rp))
        mp = out / "runs" / pid / "metrics.json"
        if mp.exists():
            client.log_artifact(rid, str(mp))
    except BaseException:
        client.set_terminated(rid, "FAILED")
        client.delete_run(rid)  # half a run must not pass for this record's: the next import redoes it
        raise
    client.set_terminated(rid, "FINISHED" if rec["status"] == "ok" else "FAILED")
    return rid


def log_sweep_to_mlflow(grid_or_out: Union[Grid, str, os.PathLike],
                        records: Optional[Iterable[dict]] = None) -> int:
    """Import ``records`` (default: all the sweep's, :func:`sweep_records`) of the sweep given by
    its :class:`Grid`, grid file or output folder into ``OUT/mlflow.db``; returns how many runs it
    created (a point whose run already holds the same record is skipped, a changed one replaced)."""
    mlflow = require_mlflow()
    out, grid = resolve_sweep(grid_or_out)
    recs = sweep_records(out, grid) if records is None else list(records)
    recs = [r for r in recs if r.get("status") in IMPORTED_STATUSES]
    client = mlflow.MlflowClient(tracking_uri=store_uri(out))
    exp_id = _experiment(client, out)
    existing = _existing(client, exp_id)
    created = 0
    for rec in recs:
        pid, digest = point_id(rec), record_hash(rec)
        old = existing.get(pid, [])
        if [h for _, h in old] == [digest]:
            continue
        for rid, _ in old:  # a changed record (or duplicates from an interrupted import): replaced
            client.delete_run(rid)
        existing[pid] = [(_log_run(client, exp_id, out, rec, digest), digest)]
        created += 1
    return created


def mlflow_sink(grid: Grid, records: Optional[Iterable[dict]] = None) -> None:
    """:func:`log_sweep_to_mlflow` for a running sweep: a failure warns and the sweep goes on
    (the records are kept; ``gflnb mlflow-import`` imports them later)."""
    try:
        log_sweep_to_mlflow(grid, records)
    except Exception as e:
        warnings.warn(f"MLflow: import into {store_uri(grid.out)} failed ({type(e).__name__}: {e}); "
                      "the records are kept, `gflnb mlflow-import` imports them later")
