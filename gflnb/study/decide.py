"""The plateau sweep's verdicts: each of the paper's claims decided from the seeds' AP on the
held-out test set, with its uncertainty in two parts (Jordan, ICLR 2024).

- **Training part**: Welch's standard error from the seeds' test AP. Each seed's AP carries its
  model's own sampling error on the test set, so this part holds that too.
- **Evaluation part**: what the test set does to the difference beyond that. A paired bootstrap
  over the test images (the same resampled images for every model of both variants) gives the sd
  of the difference of mean AP; the part of it that is each model's own (each model's bootstrap
  variance less its covariance with the other models of its variant) is taken out, as it is
  already in the training part. What is left is how differently the test images treat the two
  variants (:func:`evaluation_parts`), which no number of seeds shrinks.

The claim's standard error is ``sqrt(se_train^2 + se_eval^2)``, with Satterthwaite's degrees of
freedom counting the evaluation part as known. A claim *holds* when the interval lies above 0 in
the paper's direction, is *reversed* below it and is *not resolved* otherwise; Holm's step-down over
the claims gives the headline, the unadjusted verdict stands beside it. The paper's ties
(:data:`gflnb.study.paper.TIES`) are tested for equivalence within ``MARGIN`` (TOST), Holm over
the ties.

The bootstrap APs of every point are computed once and kept, keyed by the SHA-256 of the point's
``evals/ID.npz``, in ``bootstrap.npz`` beside the sweep's records:

    python -m gflnb.study.decide experiments/ablations/grid.yaml [--boot 1000] [--jobs 2]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from ..files import atomic_path, file_sha256
from . import finaltest, paper, stats
from .imagewise import ImageMatches, aps_on, bootstrap_weights
from .sweep import Grid, evals_path, load_grid, record_path

N_BOOT = 1000
BOOT_SEED = 0
MARGIN = 1.0  # AP: the equivalence margin of a tie, the difference the design is sized to resolve (pilot.md)
BOOTSTRAP_FILE = "bootstrap.npz"


def points(grid: Grid, test: str = "auto") -> pd.DataFrame:
    """The grid's finished points: ``id, variant, seed, test_AP, val_AP, test_images`` and the path of
    their image-by-image evaluation (``evals``), one row per ``ok`` record with a test AP.

    ``test`` says which test set: ``"run"``, the one each training run measured; ``"final"``, the
    grid's ``final_test`` (:mod:`gflnb.study.finaltest`), a point without its final test yet being
    left out; ``"auto"``, the final one where the grid names one."""
    if test not in ("auto", "run", "final"):
        raise ValueError(f"test must be auto, run or final, not {test!r}")
    final = finaltest.spec(grid) if test != "run" else None
    if test == "final" and final is None:
        raise ValueError(f"{grid.path} names no final_test")
    rows = []
    for p in grid.points:
        rp = record_path(grid, p)
        if not rp.exists():
            continue
        rec = json.loads(rp.read_text())
        if rec.get("status") != "ok" or "test_metrics" not in rec:
            continue
        row = dict(id=p.id, variant=p.variant, seed=p.seed, val_AP=float(rec["metrics"]["AP"]))
        if final is None:
            row.update(test_AP=float(rec["test_metrics"]["AP"]), evals=evals_path(grid, p),
                       test_images=int(grid.parameters.get("num_test", 0)))
        else:
            fr = finaltest.read(grid, p)
            if fr is None:
                continue
            row.update(test_AP=float(fr["metrics"]["AP"]), evals=finaltest.final_evals_path(grid, p),
                       test_images=int(fr["num_images"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=["id", "variant", "seed", "test_AP", "val_AP", "test_images", "evals"])


def _column(args: tuple[str, int, int]) -> np.ndarray:
    path, n_boot, seed = args
    m = ImageMatches.load(path)
    return aps_on(m, bootstrap_weights(len(m.img_ids), n_boot, seed))


def bootstrap(pts: pd.DataFrame, cache: Optional[Path], n_boot: int = N_BOOT, seed: int = BOOT_SEED,
              jobs: int = 1, progress: bool = False, write: bool = True) -> pd.DataFrame:
    """``[n_boot, points]`` APs of every point on the same ``n_boot`` resamples of the test images.

    Columns kept in ``cache`` are reused where the point's evaluation file is unchanged (its SHA-256)
    and the resamples are the same (``n_boot``, ``seed``); the others are computed (``jobs``
    processes) and, where ``write``, the cache rewritten (a chapter reads it and writes nothing)."""
    key = {r.id: _key(r.evals, cache) for r in pts.itertuples()}  # a point may have several test sets
    shas = {key[r.id]: file_sha256(r.evals) for r in pts.itertuples()}
    have: dict[str, np.ndarray] = {}
    if cache is not None and Path(cache).exists():
        z = np.load(cache)
        if int(z["n_boot"]) == n_boot and int(z["seed"]) == seed:
            for i, (k, sha) in enumerate(zip(z["ids"].tolist(), z["sha"].tolist())):
                have[k] = z["aps"][:, i]
                if shas.get(k, sha) != sha:  # that evaluation has changed since
                    del have[k]
    todo = [r for r in pts.itertuples() if key[r.id] not in have]
    if todo:
        args = [(str(r.evals), n_boot, seed) for r in todo]
        if jobs > 1:
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(jobs) as ex:
                cols = ex.map(_column, args)
                cols = _progress(cols, len(todo), progress)
                have.update({key[r.id]: c for r, c in zip(todo, cols)})
        else:
            have.update({key[r.id]: c for r, c in zip(todo, _progress(map(_column, args), len(todo), progress))})
        if cache is not None and write:
            old = dict(zip(*(lambda z: (z["ids"].tolist(), z["sha"].tolist()))(np.load(cache)))) \
                if Path(cache).exists() else {}
            ks = sorted(have)
            with atomic_path(cache, suffix=".tmp.npz") as tmp:
                np.savez_compressed(tmp, ids=np.array(ks), sha=np.array([shas.get(k) or old.get(k, "") for k in ks]),
                                    aps=np.stack([have[k] for k in ks], axis=1), n_boot=n_boot, seed=seed)
    return pd.DataFrame({pid: have[key[pid]] for pid in pts["id"]}, columns=list(pts["id"]))


def _key(evals: Path, cache: Optional[Path]) -> str:
    """A point's evaluation file as the cache names it: its path beside the cache (``evals/ID.npz``,
    ``final/ID.npz``), or the file's own path where it lies elsewhere."""
    try:
        return str(Path(evals).resolve().relative_to(Path(cache).resolve().parent)) if cache else str(evals)
    except ValueError:
        return str(Path(evals).resolve())


def _progress(it, total: int, show: bool):
    if not show:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, total=total, desc="bootstrap", unit="point")


def own_sampling_var(boot: np.ndarray) -> float:
    """The sampling variance that is a model's own, not its variant's, from the bootstrap APs
    ``[B, n]`` of a variant's ``n`` models: the mean variance of one model's AP over the resamples
    less the mean covariance of two of them (0 with one model, where the two cannot be told apart).
    For accuracy this is Jordan's (ICLR 2024) ``mean_x p_x (1 - p_x) / n``."""
    n = boot.shape[1]
    if n < 2:
        return 0.0
    c = np.cov(boot, rowvar=False)  # [n, n]
    return float(max(np.mean(np.diag(c)) - (c.sum() - np.trace(c)) / (n * (n - 1)), 0.0))


def evaluation_parts(boot_better: np.ndarray, boot_worse: np.ndarray) -> dict[str, float]:
    """How the test set moves a claim's difference of mean AP, from the bootstrap APs ``[B, n_better]``
    and ``[B, n_worse]`` on the same resamples: ``total``, the sd of the difference over resamples;
    ``model``, its part that is each model's own (already in the seeds' spread, and shrinking with
    more seeds); ``shared``, the rest, ``sqrt(total^2 - model^2)`` floored at 0: how differently the
    test images treat the two variants, which no number of seeds measures or shrinks."""
    a, b = np.asarray(boot_better, np.float64), np.asarray(boot_worse, np.float64)
    total = float((a.mean(1) - b.mean(1)).std(ddof=1))
    model = math.sqrt(own_sampling_var(a) / a.shape[1] + own_sampling_var(b) / b.shape[1])
    return dict(total=total, model=model, shared=math.sqrt(max(total ** 2 - model ** 2, 0.0)))


def claim_interval(better: Sequence[float], worse: Sequence[float], boot_better: np.ndarray,
                   boot_worse: np.ndarray, confidence: float = stats.CONFIDENCE) -> dict[str, float]:
    """``dict(diff, se_train, se_eval, se_eval_total, se, dof, lo, hi, p)`` for
    ``mean(better) - mean(worse)``: the seeds' test APs (at least 2 a side) and their bootstrap APs
    ``[B, n_better]``, ``[B, n_worse]`` on the same resamples. ``se_eval`` is the shared part of
    :func:`evaluation_parts`; the module docstring gives the rule."""
    a, b = np.asarray(better, np.float64), np.asarray(worse, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    ev = evaluation_parts(boot_better, boot_worse)
    se = math.sqrt(va + vb + ev["shared"] ** 2)
    train_terms = va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)
    dof = se ** 4 / train_terms if train_terms > 0 else math.inf  # Satterthwaite, the bootstrap part known
    out = stats.t_interval(float(a.mean() - b.mean()), se, dof, confidence)
    return dict(out, se_train=math.sqrt(va + vb), se_eval=ev["shared"], se_eval_total=ev["total"])


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
        r["verdict"] = "not resolved" if math.isnan(r["lo"]) else stats.verdict(r["lo"], r["hi"])
        r["why"] = ("not run" if min(len(a), len(b)) == 0 else "fewer than 2 seeds" if min(len(a), len(b)) < 2
                    else "" if r["verdict"] != "not resolved" else "within the spread")
        rows.append(r)
    out = pd.DataFrame(rows)
    alpha = 1 - confidence
    tested = int(np.isfinite(out["p"]).sum()) if len(out) else 0
    hits = stats.holm(out["p"].tolist(), alpha) if len(out) else []
    out["holm_verdict"] = [stats.verdict(lo, hi) if h else "not resolved" for h, lo, hi in zip(hits, out["lo"], out["hi"])]
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
