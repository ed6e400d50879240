"""The plateau sweep's verdicts: each of the paper's claims decided from the seeds' AP on the
held-out test set, with its uncertainty in two parts (Jordan, ICLR 2024).

- **Training part**: Welch's standard error from the seeds' test AP, the test set held fixed.
- **Evaluation part**: how the difference of the two variants' mean AP moves when only the test
  images are resampled, the same images for every model of both (a paired bootstrap over images,
  :func:`gflnb.study.imagewise.paired_difference`'s sd).

The claim's standard error is ``sqrt(se_train^2 + se_eval^2)``, with Satterthwaite's degrees of
freedom counting the evaluation part as known. Each seed's test AP already carries its model's own
sampling error, so the sum counts that part twice: the interval is conservative, never narrower
than the two parts allow. A claim *holds* when the interval lies above 0 in the paper's direction,
is *reversed* below it and is *not resolved* otherwise; Holm's step-down over the claims gives the
headline, the unadjusted verdict stands beside it. The paper's ties (:data:`gflnb.study.paper.TIES`)
are tested for equivalence within ``MARGIN`` (TOST), Holm over the ties.

The bootstrap APs of every point are computed once and kept, keyed by the SHA-256 of the point's
``evals/ID.npz``, in ``bootstrap.npz`` beside the sweep's records:

    python -m gflnb.study.decide experiments/ablations/grid.yaml [--boot 1000] [--jobs 2]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from ..files import atomic_path
from . import paper, stats
from .imagewise import ImageMatches, aps_on, bootstrap_weights
from .sweep import Grid, evals_path, load_grid, record_path

N_BOOT = 1000
BOOT_SEED = 0
MARGIN = 1.0  # AP: the equivalence margin of a tie, the difference the design is sized to resolve (pilot.md)
BOOTSTRAP_FILE = "bootstrap.npz"


def points(grid: Grid) -> pd.DataFrame:
    """The grid's finished points: ``id, variant, seed, test_AP, val_AP`` and the path of their
    image-by-image evaluation (``evals``), one row per ``ok`` record with a test AP."""
    rows = []
    for p in grid.points:
        rp = record_path(grid, p)
        if not rp.exists():
            continue
        rec = json.loads(rp.read_text())
        if rec.get("status") != "ok" or "test_metrics" not in rec:
            continue
        rows.append(dict(id=p.id, variant=p.variant, seed=p.seed, test_AP=float(rec["test_metrics"]["AP"]),
                         val_AP=float(rec["metrics"]["AP"]), evals=evals_path(grid, p)))
    return pd.DataFrame(rows, columns=["id", "variant", "seed", "test_AP", "val_AP", "evals"])


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _column(args: tuple[str, int, int]) -> np.ndarray:
    path, n_boot, seed = args
    m = ImageMatches.load(path)
    return aps_on(m, bootstrap_weights(len(m.img_ids), n_boot, seed))


def bootstrap(pts: pd.DataFrame, cache: Optional[Path], n_boot: int = N_BOOT, seed: int = BOOT_SEED,
              jobs: int = 1, progress: bool = False) -> pd.DataFrame:
    """``[n_boot, points]`` APs of every point on the same ``n_boot`` resamples of the test images.

    Columns kept in ``cache`` are reused where the point's evaluation file is unchanged (its SHA-256)
    and the resamples are the same (``n_boot``, ``seed``); the others are computed (``jobs``
    processes) and the cache rewritten."""
    shas = {r.id: _sha(r.evals) for r in pts.itertuples()}
    have: dict[str, np.ndarray] = {}
    if cache is not None and Path(cache).exists():
        z = np.load(cache)
        if int(z["n_boot"]) == n_boot and int(z["seed"]) == seed:
            for i, (pid, sha) in enumerate(zip(z["ids"].tolist(), z["sha"].tolist())):
                if shas.get(pid) == sha:
                    have[pid] = z["aps"][:, i]
    todo = [r for r in pts.itertuples() if r.id not in have]
    if todo:
        args = [(str(r.evals), n_boot, seed) for r in todo]
        if jobs > 1:
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(jobs) as ex:
                cols = ex.map(_column, args)
                cols = _progress(cols, len(todo), progress)
                have.update({r.id: c for r, c in zip(todo, cols)})
        else:
            have.update({r.id: c for r, c in zip(todo, _progress(map(_column, args), len(todo), progress))})
        if cache is not None:
            ids = sorted(have)
            with atomic_path(cache, suffix=".tmp.npz") as tmp:
                np.savez_compressed(tmp, ids=np.array(ids), sha=np.array([shas.get(i, "") for i in ids]),
                                    aps=np.stack([have[i] for i in ids], axis=1), n_boot=n_boot, seed=seed)
    return pd.DataFrame({pid: have[pid] for pid in pts["id"]}, columns=list(pts["id"]))


def _progress(it, total: int, show: bool):
    if not show:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, total=total, desc="bootstrap", unit="point")


def claim_interval(better: Sequence[float], worse: Sequence[float], boot_better: np.ndarray,
                   boot_worse: np.ndarray, confidence: float = stats.CONFIDENCE) -> dict[str, float]:
    """``dict(diff, se_train, se_eval, se, dof, lo, hi, p)`` for ``mean(better) - mean(worse)``: the
    seeds' test APs (at least 2 a side) and their bootstrap APs ``[B, n_better]``, ``[B, n_worse]``
    on the same resamples (the module docstring gives the rule)."""
    a, b = np.asarray(better, np.float64), np.asarray(worse, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    d_boot = np.asarray(boot_better).mean(1) - np.asarray(boot_worse).mean(1)  # [B]
    se_eval = float(d_boot.std(ddof=1))
    se = math.sqrt(va + vb + se_eval ** 2)
    train_terms = va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)
    dof = se ** 4 / train_terms if train_terms > 0 else math.inf  # Satterthwaite, the bootstrap part known
    out = stats.t_interval(float(a.mean() - b.mean()), se, dof, confidence)
    return dict(out, se_train=math.sqrt(va + vb), se_eval=se_eval)


def _verdict(lo: float, hi: float) -> str:
    return "holds" if lo > 0 else "reversed" if hi < 0 else "not resolved"


def claims(pts: pd.DataFrame, boot: pd.DataFrame, claim_list: Sequence[dict[str, Any]] = paper.CLAIMS,
           confidence: float = stats.CONFIDENCE, power: float = stats.POWER) -> pd.DataFrame:
    """One row per claim: the paper's and this sweep's difference, both parts of its standard error,
    the interval, p, the unadjusted and Holm verdicts, and for a claim not resolved the seeds a side
    that would resolve its observed difference with ``power`` at Holm's strictest step
    (``seeds_needed``; None where the evaluation part alone keeps it out of reach)."""
    rows = []
    for c in claim_list:
        a, b = pts[pts["variant"] == c["better"]], pts[pts["variant"] == c["worse"]]
        r: dict[str, Any] = dict(claim=c["claim"], table=c["table"], better=c["better"], worse=c["worse"],
                                 paper_diff=paper.paper_diff(c), n_better=len(a), n_worse=len(b))
        if len(a) >= 2 and len(b) >= 2:
            r.update(claim_interval(a["test_AP"], b["test_AP"], boot[list(a["id"])].to_numpy(),
                                    boot[list(b["id"])].to_numpy(), confidence))
        else:
            r.update(diff=float(a["test_AP"].mean() - b["test_AP"].mean()) if len(a) and len(b) else math.nan,
                     se_train=math.nan, se_eval=math.nan, se=math.nan, dof=math.nan, lo=math.nan, hi=math.nan,
                     p=math.nan)
        r["verdict"] = "not resolved" if math.isnan(r["lo"]) else _verdict(r["lo"], r["hi"])
        r["why"] = ("not run" if min(len(a), len(b)) == 0 else "fewer than 2 seeds" if min(len(a), len(b)) < 2
                    else "" if r["verdict"] != "not resolved" else "within the spread")
        rows.append(r)
    out = pd.DataFrame(rows)
    alpha = 1 - confidence
    tested = int(np.isfinite(out["p"]).sum()) if len(out) else 0
    hits = stats.holm(out["p"].tolist(), alpha) if len(out) else []
    out["holm_verdict"] = [_verdict(lo, hi) if h else "not resolved" for h, lo, hi in zip(hits, out["lo"], out["hi"])]
    need = []
    for r in out.itertuples():
        if r.why != "within the spread":
            need.append(None)
            continue
        sd = math.sqrt((pts.loc[pts["variant"] == r.better, "test_AP"].var(ddof=1)
                        + pts.loc[pts["variant"] == r.worse, "test_AP"].var(ddof=1)) / 2)
        need.append(stats.seeds_for_power(r.diff, sd, alpha / max(tested, 1), power, floor=r.se_eval))
    out["seeds_needed"] = need
    return out


def ties(pts: pd.DataFrame, boot: pd.DataFrame, margin: float = MARGIN, tie_list: Sequence[dict] = paper.TIES,
         alpha: float = 1 - stats.CONFIDENCE) -> pd.DataFrame:
    """One row per tie of the paper: the difference ``a - b``, its two standard-error parts, the
    ``1 - 2 alpha`` interval and TOST's p against ``(-margin, margin)``, and whether the two are
    equivalent, alone and under Holm over the ties."""
    rows = []
    for t in tie_list:
        a, b = pts[pts["variant"] == t["a"]], pts[pts["variant"] == t["b"]]
        r: dict[str, Any] = dict(tie=t["tie"], table=t["table"], a=t["a"], b=t["b"], n_a=len(a), n_b=len(b))
        if len(a) >= 2 and len(b) >= 2:
            ci = claim_interval(a["test_AP"], b["test_AP"], boot[list(a["id"])].to_numpy(),
                                boot[list(b["id"])].to_numpy())
            r.update(se_train=ci["se_train"], se_eval=ci["se_eval"],
                     **stats.tost_se(ci["diff"], ci["se"], ci["dof"], margin, alpha))
        else:
            r.update(diff=math.nan, se_train=math.nan, se_eval=math.nan, lo=math.nan, hi=math.nan, p=math.nan,
                     equivalent=False, margin=margin)
        rows.append(r)
    out = pd.DataFrame(rows)
    out["holm_equivalent"] = stats.holm(out["p"].tolist(), alpha) if len(out) else []
    return out


def decide(grid_file: str | Path, n_boot: int = N_BOOT, jobs: int = 1,
           progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(points, claims, ties)`` of a sweep, the bootstrap kept in its ``bootstrap.npz``."""
    grid = load_grid(grid_file)
    pts = points(grid)
    boot = bootstrap(pts, grid.out / BOOTSTRAP_FILE, n_boot, BOOT_SEED, jobs, progress)
    return pts, claims(pts, boot), ties(pts, boot)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m gflnb.study.decide", description=__doc__.splitlines()[0])
    ap.add_argument("grid")
    ap.add_argument("--boot", type=int, default=N_BOOT, help="bootstrap resamples of the test images")
    ap.add_argument("--jobs", type=int, default=1, help="processes computing the bootstrap")
    a = ap.parse_args(argv)
    pts, cl, ti = decide(a.grid, a.boot, a.jobs, progress=True)
    pd.set_option("display.width", 200)
    print(f"{len(pts)} points of {pts['variant'].nunique()} variants")
    print(cl[["claim", "n_better", "n_worse", "diff", "se_train", "se_eval", "lo", "hi", "p", "verdict",
              "holm_verdict", "seeds_needed"]].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(ti[["tie", "n_a", "n_b", "diff", "se_train", "se_eval", "lo", "hi", "p", "equivalent",
              "holm_equivalent"]].to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
