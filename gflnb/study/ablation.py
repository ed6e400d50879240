"""Chapter 7's numbers: the sweep's table (``gflnb sweep``) read, summarised over seeds, set beside
the paper's tables (:mod:`gflnb.study.paper`), and each of the paper's claims given a verdict.

The verdict rule (:func:`compare`): with ``a`` the per-seed AP of the variant the paper says is
better and ``b`` the other's, ``d = mean(a) - mean(b)``, Welch's standard error
``se = sqrt(s_a^2/n_a + s_b^2/n_b)`` (sample variances) and the Welch-Satterthwaite degrees of
freedom ``nu = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``; the interval is
``d +- t_nu(1 - alpha/2) se`` at ``CONFIDENCE = 1 - alpha``. The claim *holds* when the interval
lies above 0, is *reversed* when it lies below, and is *not resolved* when it contains 0 or either
variant has fewer than 2 successful seeds. Across claims, :func:`claim_table` also gives Holm's
step-down verdicts, which keep the chance of any false verdict among all claims at ``alpha``.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from ..engine.evaluate import AP_NAMES
from . import paper
from .stats import CONFIDENCE, _values, fmt_interval, holm, welch
from .stats import verdict as _verdict
from .sweep import GridError, read_grid_file

RULE = (f"a claim holds when the {CONFIDENCE:.0%} confidence interval of the mean AP difference (Welch's t "
        "with the Welch-Satterthwaite degrees of freedom, from the per-seed values) lies above 0 in the "
        "paper's direction, is reversed when it lies below 0, and is not resolved when it contains 0 or "
        "either variant has fewer than 2 successful seeds")
MAX_SEEDS = 100  # seeds_needed searches up to this many per variant
AP_KEYS = AP_NAMES  # the COCO APs of a row (gflnb/engine/evaluate.py)


# ------------------------------------------------------------------ the verdict rule
def compare(better: Sequence[float], worse: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """``dict(diff, se, dof, lo, hi, p, n_better, n_worse, verdict)`` for per-seed values of the two
    variants (:func:`welch`; the module docstring states the rule).

    ``diff = mean(better) - mean(worse)`` (nan when either is empty); ``se``, ``dof``, the interval
    ``[lo, hi]`` and ``p`` are nan with fewer than 2 values on a side; NaNs among the values (failed
    seeds) are dropped.
    """
    a, b = _values(better), _values(worse)
    out: dict[str, Any] = dict(diff=float(a.mean() - b.mean()) if len(a) and len(b) else math.nan, se=math.nan,
                               dof=math.nan, lo=math.nan, hi=math.nan, p=math.nan)
    if len(a) >= 2 and len(b) >= 2:
        out.update(welch(a, b, confidence))
    verdict = "not resolved" if math.isnan(out["lo"]) else _verdict(out["lo"], out["hi"])
    return dict(out, n_better=int(len(a)), n_worse=int(len(b)), verdict=verdict)


def seeds_needed(better: Sequence[float], worse: Sequence[float], confidence: float = CONFIDENCE,
                 max_seeds: int = MAX_SEEDS) -> Optional[int]:
    """The fewest seeds per variant at which the measured difference and spreads would resolve the
    claim (its interval exclude 0); None beyond ``max_seeds``, or without two seeds a side.

    A planning figure: it takes the measured means and sample variances as if they were the truth.
    """
    a, b = _values(better), _values(worse)
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats
    d, sa, sb = abs(float(a.mean() - b.mean())), float(a.var(ddof=1)), float(b.var(ddof=1))
    if sa + sb == 0:
        return 2 if d > 0 else None
    for n in range(2, max_seeds + 1):
        va, vb = sa / n, sb / n
        dof = (va + vb) ** 2 / ((va ** 2 + vb ** 2) / (n - 1))
        if float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(va + vb) < d:
            return n
    return None


# ------------------------------------------------------------------ reading the sweep
NOT_RUN = ("missing", "running")  # rows without a result yet (a point in flight is no failure)


def read_results(path: str | Path) -> pd.DataFrame:
    """``results.csv`` as a frame: ``seed`` int, AP columns float (nan where empty), ``status`` str."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep table at {path}: run `make ablations` (gflnb sweep "
                                "experiments/ablations/grid.yaml) first")
    df = pd.read_csv(path, dtype={"variant": str, "status": str, "error": str}, keep_default_na=False)
    for k in AP_KEYS + ("iterations",):
        if k in df:
            df[k] = pd.to_numeric(df[k], errors="coerce")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    return df


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The successful points: status ``ok`` and a finite AP."""
    if df.empty:
        return df
    return df[(df["status"] == "ok") & np.isfinite(df["AP"])]


def read_grid(path: str | Path) -> dict[str, Any]:
    """The grid file as a mapping, ``variants_from`` resolved as the sweep resolves it
    (:func:`gflnb.study.sweep.read_grid_file`); {} when it is missing, and with a warning when it is
    unreadable."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return read_grid_file(path)
    except GridError as e:
        warnings.warn(str(e))
        return {}


def variant_order(df: pd.DataFrame, grid: dict[str, Any]) -> list[str]:
    """The grid's variant order, then any variant only the table has."""
    names = list((grid.get("variants") or {}).keys())
    return names + [v for v in (df["variant"].unique() if not df.empty else []) if v not in names]


def variant_labels(grid: dict[str, Any], variants: Sequence[str]) -> dict[str, str]:
    """A display name per variant: the grid's ``label``, else the paper's row name."""
    gv = grid.get("variants") or {}
    return {v: str((gv.get(v) or {}).get("label") or paper.label(v)) for v in variants}


def read_records(records_dir: str | Path) -> list[dict[str, Any]]:
    """Every point record (``<variant>__s<seed>.json``) in the folder, by file name; unreadable ones skipped."""
    d = Path(records_dir)
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            warnings.warn(f"{p}: unreadable record ({e})")
            continue
        if isinstance(rec, dict) and "variant" in rec:
            out.append(rec)
    return out


# ------------------------------------------------------------------ summaries over seeds
def variant_stats(df: pd.DataFrame, variants: Sequence[str], metrics: Sequence[str] = ("AP", "AP50", "AP75")
                  ) -> pd.DataFrame:
    """Per variant: ``n`` (successful seeds), ``failed``, ``missing`` (not run yet), and ``<m>_mean``,
    ``<m>_std`` (nan for n < 2)."""
    ok = ok_rows(df)
    rows = []
    for v in variants:
        vals = ok[ok["variant"] == v] if not ok.empty else ok
        row: dict[str, Any] = dict(variant=v, n=int(len(vals)),
                                   failed=int(((df["variant"] == v) & (df["status"] == "failed")).sum())
                                   if not df.empty else 0,
                                   missing=int(((df["variant"] == v) & df["status"].isin(NOT_RUN)).sum())
                                   if not df.empty else 0)
        for m in metrics:
            x = vals[m].dropna().to_numpy(np.float64) if m in vals else np.zeros(0)
            row[f"{m}_mean"] = float(x.mean()) if len(x) else math.nan
            row[f"{m}_std"] = float(x.std(ddof=1)) if len(x) >= 2 else math.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame(columns=["n", "failed", "missing"])


def fmt(mean: float, std: float, n: int, digits: int = 1) -> str:
    """``41.2 ± 0.3 (n=3)``, ``41.2 (n=1)`` where one seed has no spread, ``–`` without a run."""
    if not n or not np.isfinite(mean):
        return "–"
    if n < 2 or not np.isfinite(std):
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def side_by_side(table: str, stats: pd.DataFrame) -> pd.DataFrame:
    """One of the paper's tables, its rows beside this sweep's mean ± std over seeds."""
    t = paper.TABLES[table]
    rows = []
    for v, row in t["rows"].items():
        r: dict[str, Any] = {"paper's row": row["label"], "variant": v}
        for m in ("AP", "AP50", "AP75"):
            r[f"paper {m}"] = "–" if row.get(m) is None else f"{row[m]:.1f}"
        for m in ("AP", "AP50", "AP75"):
            if v in stats.index:
                s = stats.loc[v]
                r[f"here {m}"] = fmt(s[f"{m}_mean"], s[f"{m}_std"], int(s["n"]))
            else:
                r[f"here {m}"] = "–"
        rows.append(r)
    return pd.DataFrame(rows).set_index("paper's row")


def claim_table(df: pd.DataFrame, claims: Sequence[dict[str, str]] = paper.CLAIMS,
                confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per claim: the paper's and this sweep's AP difference (better - worse), its standard
    error, degrees of freedom, ``confidence`` interval ``[lo, hi]`` and p-value, the seeds on each side,
    the verdict of :func:`compare` and why an unresolved one is, Holm's verdict across the claims
    (``holm_verdict``), and, for a claim left within the seed spread, the seeds per variant that spread
    would need (``seeds_needed``; None: more than ``MAX_SEEDS``)."""
    ok = ok_rows(df)
    rows = []
    for c in claims:
        def ap(v: str) -> list[float]:
            return ok.loc[ok["variant"] == v, "AP"].tolist() if not ok.empty else []
        r = compare(ap(c["better"]), ap(c["worse"]), confidence)
        need = None
        if r["verdict"] != "not resolved":
            why = ""
        elif min(r["n_better"], r["n_worse"]) == 0:
            why = "not run"
        elif min(r["n_better"], r["n_worse"]) < 2:
            why = "fewer than 2 seeds"
        else:
            why = "within the seed spread"
            need = seeds_needed(ap(c["better"]), ap(c["worse"]), confidence)
        rows.append(dict(claim=c["claim"], table=c["table"], better=c["better"], worse=c["worse"],
                         paper_diff=paper.paper_diff(c), diff=r["diff"], se=r["se"], dof=r["dof"], lo=r["lo"],
                         hi=r["hi"], p=r["p"], n_better=r["n_better"], n_worse=r["n_worse"], verdict=r["verdict"],
                         why=why, seeds_needed=need))
    out = pd.DataFrame(rows)
    if len(out):
        rejected = holm(out["p"].tolist(), 1 - confidence)
        out["holm_verdict"] = [_verdict(lo, hi) if hit else "not resolved"
                               for hit, lo, hi in zip(rejected, out["lo"], out["hi"])]
    return out


def chance_verdicts(claims: pd.DataFrame, confidence: float = CONFIDENCE) -> float:
    """The verdicts chance alone would give if no testable claim (two seeds a side) had a real
    difference: each such claim's interval excludes 0 with probability ``1 - confidence``."""
    return float(np.isfinite(claims["p"]).sum() * (1 - confidence)) if len(claims) else 0.0


def verdict_counts(claims: pd.DataFrame, column: str = "verdict") -> dict[str, int]:
    """``dict(holds, reversed, not_resolved)`` counts of ``column`` (``verdict`` or ``holm_verdict``);
    they add up to the number of claims."""
    v = claims[column] if not claims.empty and column in claims else pd.Series(dtype=str)
    return dict(holds=int((v == "holds").sum()), reversed=int((v == "reversed").sum()),
                not_resolved=int((v == "not resolved").sum()))


def run_info(df: pd.DataFrame, grid: dict[str, Any]) -> dict[str, Any]:
    """Run counts and size: runs, ok, failed, missing (not run yet or still running: a sweep over
    several sittings), variants, seeds, iterations (sorted distinct values of the successful runs),
    and from the grid's parameters config, num_train, num_val, epochs (None if absent)."""
    ok = ok_rows(df)
    par = grid.get("parameters") or {}
    its = sorted({int(i) for i in ok["iterations"].dropna()}) if "iterations" in ok and not ok.empty else []
    missing = int(df["status"].isin(NOT_RUN).sum()) if "status" in df else 0
    return dict(runs=int(len(df)), ok=int(len(ok)), failed=int(len(df) - len(ok) - missing), missing=missing,
                variants=int(ok["variant"].nunique()) if not ok.empty else 0,
                seeds=sorted(int(s) for s in ok["seed"].dropna().unique()) if not ok.empty else [],
                iterations=its, config=par.get("config"), num_train=par.get("num_train"),
                num_val=par.get("num_val"), epochs=par.get("epochs"))


# ------------------------------------------------------------------ the Fig. 2 records
def background_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per record with a ``background`` summary (gflnb.chapters.analysis.background_summary)."""
    rows = []
    for r in records:
        b = r.get("background")
        if not isinstance(b, dict):
            continue
        q99 = (b.get("bg_quality_q") or {}).get("q99")
        rows.append(dict(variant=r["variant"], seed=r.get("seed"), quality=b.get("quality"),
                         separate=bool(b.get("separate")), images=b.get("images"), anchors=b.get("anchors"),
                         background=b.get("background"), positive=b.get("positive"),
                         pos_median_score=b.get("pos_median_score"), bg_outrank_frac=b.get("bg_outrank_frac"),
                         ranking_auc=b.get("ranking_auc"), bg_score_q99=(b.get("bg_score_q") or {}).get("q99"),
                         bg_quality_q99=q99, bg_lowcls_highq_frac=b.get("bg_lowcls_highq_frac")))
    cols = ["variant", "seed", "quality", "separate", "images", "anchors", "background", "positive",
            "pos_median_score", "bg_outrank_frac", "ranking_auc", "bg_score_q99", "bg_quality_q99",
            "bg_lowcls_highq_frac"]
    return pd.DataFrame(rows, columns=cols).astype({c: float for c in cols[8:]})


def pool_background(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant, the seeds' summaries pooled: histograms summed, fractions averaged over seeds.

    ``dict(quality, separate, seeds, background, positive, bg_outrank_frac, bg_lowcls_highq_frac,
    ranking_auc, pos_median_score, hist_score_iou, hist_bg_cls_quality)``; a mean is None where no
    seed has the number.
    """
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        b = r.get("background")
        if not isinstance(b, dict):
            continue
        p = out.setdefault(r["variant"], dict(quality=b.get("quality"), separate=bool(b.get("separate")), seeds=0,
                                              background=0, positive=0, _vals={}, hist_score_iou=None,
                                              hist_bg_cls_quality=None))
        p["seeds"] += 1
        p["background"] += int(b.get("background") or 0)
        p["positive"] += int(b.get("positive") or 0)
        for k in ("bg_outrank_frac", "bg_lowcls_highq_frac", "ranking_auc", "pos_median_score"):
            if b.get(k) is not None:
                p["_vals"].setdefault(k, []).append(float(b[k]))
        for k in ("hist_score_iou", "hist_bg_cls_quality"):
            if b.get(k) is not None:
                h = np.asarray(b[k], np.int64)
                p[k] = h if p[k] is None else p[k] + h
    for p in out.values():
        vals = p.pop("_vals")
        for k in ("bg_outrank_frac", "bg_lowcls_highq_frac", "ranking_auc", "pos_median_score"):
            p[k] = float(np.mean(vals[k])) if k in vals else None
    return out


# ------------------------------------------------------------------ learning curves (eval_every)
def learning_curves(records: Sequence[dict[str, Any]], df: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per (variant, seed, epoch) of the successful records' ``eval_history``: columns
    ``variant, seed, epoch, iter, AP``. With ``df`` (the sweep's table), only the records of its ``ok``
    rows count, so a stale record from another grid draws no curve."""
    keep = None
    if df is not None:
        ok = ok_rows(df)
        keep = {(str(v), int(s)) for v, s in zip(ok["variant"], ok["seed"])}
    rows = []
    for r in records:
        if r.get("status") != "ok" or (keep is not None and (r["variant"], int(r.get("seed", -1))) not in keep):
            continue
        for e in r.get("eval_history") or []:
            if e.get("AP") is not None:
                rows.append(dict(variant=r["variant"], seed=int(r["seed"]), epoch=int(e["epoch"]),
                                 iter=int(e.get("iter", 0)), AP=float(e["AP"])))
    return pd.DataFrame(rows, columns=["variant", "seed", "epoch", "iter", "AP"])


def curve_stats(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, epoch): ``n`` seeds, ``mean``, ``lo`` and ``hi`` (the seeds' range) of AP."""
    if curves.empty:
        return pd.DataFrame(columns=["variant", "epoch", "n", "mean", "lo", "hi"])
    g = curves.groupby(["variant", "epoch"])["AP"]
    return pd.DataFrame(dict(n=g.size(), mean=g.mean(), lo=g.min(), hi=g.max())).reset_index()



def longer_schedules(grid: dict[str, Any]) -> dict[str, str]:
    """The grid's variants that belong to no paper table and extend one that does, by name
    (``gfl_24e`` extends ``gfl``): ``{longer: base}``, in the grid's order."""
    variants = grid.get("variants") or {}
    out = {}
    for e, spec in variants.items():
        if (spec or {}).get("tables"):
            continue
        base = [v for v in variants if v != e and e.startswith(v + "_")]
        if base:
            out[e] = max(base, key=len)  # the longest prefix: its closest relative
    return out


def curve_panels(grid: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    """The learning-curve figure's panels: one per paper table (its rows), then one for the grid's
    variants that belong to no table (the longer schedules) beside the table rows they extend."""
    panels = {tid: (t["title"].split(":")[0], list(t["rows"])) for tid, t in paper.TABLES.items()}
    longer = longer_schedules(grid)
    if longer:
        bases = set(longer.values())
        base = [v for v in (grid.get("variants") or {}) if v in bases]
        panels["schedule"] = ("Longer schedules", base + list(longer))
    return panels


def _epochs_of(grid: dict[str, Any], variant: str) -> Optional[int]:
    own = ((grid.get("variants") or {}).get(variant) or {}).get("parameters") or {}
    e = own.get("epochs", (grid.get("parameters") or {}).get("epochs"))
    return None if e is None else int(e)


SCHEDULE_READINGS = {"holds": "the longer is better", "reversed": "the longer is worse",
                     "not resolved": "not resolved", "fewer than 2 seeds": "fewer than 2 seeds"}


def schedule_gains(df: pd.DataFrame, grid: dict[str, Any], curves: Optional[pd.DataFrame] = None,
                   confidence: float = CONFIDENCE) -> pd.DataFrame:
    """How far the grid's schedule is from a plateau: per longer-schedule variant
    (:func:`longer_schedules`), its final AP minus its base's as :func:`compare` over seeds (``holds``:
    the longer schedule is better, so the base stopped short of a plateau), and, with ``curves``,
    ``last_gain``: the mean over seeds of what the longer run gained over its last evaluation interval
    (from epoch ``last_from``), near 0 at a plateau. Columns ``variant, base, epochs, base_epochs,
    AP, base_AP, diff, lo, hi, n_better, n_worse, verdict, reading, last_from, last_gain``, where
    ``reading`` is one of :data:`SCHEDULE_READINGS` (the verdict, or too few seeds for one)."""
    ok = ok_rows(df)
    rows = []
    for v, b in longer_schedules(grid).items():
        a, w = ok.loc[ok["variant"] == v, "AP"].tolist(), ok.loc[ok["variant"] == b, "AP"].tolist()
        r = compare(a, w, confidence)
        last_from, last_gain = None, math.nan
        if curves is not None and len(curves):
            c = curves[curves["variant"] == v].pivot_table(index="seed", columns="epoch", values="AP")
            if c.shape[1] >= 2:
                e0, e1 = c.columns[-2], c.columns[-1]
                last_from, last_gain = int(e0), float((c[e1] - c[e0]).mean())
        rows.append(dict(variant=v, base=b, epochs=_epochs_of(grid, v), base_epochs=_epochs_of(grid, b),
                         AP=float(np.mean(a)) if a else math.nan, base_AP=float(np.mean(w)) if w else math.nan,
                         diff=r["diff"], lo=r["lo"], hi=r["hi"], n_better=r["n_better"], n_worse=r["n_worse"],
                         verdict=r["verdict"],
                         reading=(r["verdict"] if min(r["n_better"], r["n_worse"]) >= 2 else "fewer than 2 seeds"),
                         last_from=last_from, last_gain=last_gain))
    cols = ["variant", "base", "epochs", "base_epochs", "AP", "base_AP", "diff", "lo", "hi", "n_better", "n_worse",
            "verdict", "reading", "last_from", "last_gain"]
    return pd.DataFrame(rows, columns=cols)


def schedule_sentences(gains: pd.DataFrame, labels: dict[str, str]) -> list[str]:
    """One sentence per :func:`schedule_gains` row whose two variants both have runs."""
    out = []
    for _, r in gains.iterrows():
        if not np.isfinite(r["diff"]):
            continue
        ci = (" " + fmt_interval(r["lo"], r["hi"], signed=True) if np.isfinite(r["lo"]) else
              " (one seed on a side: no interval)")
        reading = {"holds": f"so {r['base_epochs']} epochs stop short of a plateau",
                   "reversed": f"so the longer schedule ends below {r['base_epochs']} epochs",
                   "not resolved": f"not resolved at {CONFIDENCE:.0%}: no evidence that {r['base_epochs']} epochs "
                                   "stop short of a plateau",
                   "fewer than 2 seeds": "too few seeds for a verdict yet"}[r["reading"]]
        tail = ""
        if pd.notna(r["last_from"]) and np.isfinite(r["last_gain"]):
            tail = (f"; over its last {int(r['epochs'] - r['last_from'])} epochs the longer run still moved "
                    f"{r['last_gain']:+.2f} AP")
        out.append(f"{labels.get(r['base'], r['base'])}: {r['epochs']} epochs give {r['AP']:.2f} AP against "
                   f"{r['base_AP']:.2f} at {r['base_epochs']}, {r['diff']:+.2f}{ci} over {r['n_better']} and "
                   f"{r['n_worse']} seeds, {reading}{tail}.")
    return out


def claims_by_epoch(curves: pd.DataFrame, claims: Sequence[dict[str, str]] = paper.CLAIMS,
                    confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Each claim's :func:`compare` at every epoch both of its variants were evaluated: columns
    ``claim, epoch, diff, lo, hi, n_better, n_worse, verdict`` (the verdict rule of the final table)."""
    rows = []
    for c in claims:
        a = curves[curves["variant"] == c["better"]]
        b = curves[curves["variant"] == c["worse"]]
        for ep in sorted(set(a["epoch"]) & set(b["epoch"])):
            r = compare(a.loc[a["epoch"] == ep, "AP"].tolist(), b.loc[b["epoch"] == ep, "AP"].tolist(), confidence)
            rows.append(dict(claim=c["claim"], epoch=int(ep), diff=r["diff"], lo=r["lo"], hi=r["hi"],
                             n_better=r["n_better"], n_worse=r["n_worse"], verdict=r["verdict"]))
    return pd.DataFrame(rows, columns=["claim", "epoch", "diff", "lo", "hi", "n_better", "n_worse", "verdict"])


def _epochs(x: Sequence[int]) -> str:
    x = [int(e) for e in x]
    return ", ".join(map(str, x[:-1])) + f" and {x[-1]}" if len(x) > 1 else str(x[0]) if x else "none"


def reversal_sentences(claims: pd.DataFrame, by_epoch: pd.DataFrame) -> list[str]:
    """For each claim the final table reverses, whether the reversal is there at every epoch
    evaluated or only from some epoch on (the point difference below 0, and the interval below 0)."""
    out = []
    for _, c in claims[claims["verdict"] == "reversed"].iterrows() if len(claims) else []:
        e = by_epoch[by_epoch["claim"] == c["claim"]].sort_values("epoch")
        if e.empty:
            out.append(f"* {c['claim']}: reversed at the end; no per-epoch evaluations to say since when.")
            continue
        neg, rev = e.loc[e["diff"] < 0, "epoch"].tolist(), e.loc[e["verdict"] == "reversed", "epoch"].tolist()
        eps = e["epoch"].tolist()
        if neg == eps:
            when = f"below 0 at every epoch evaluated ({_epochs(eps)})"
        else:
            pos = [x for x in eps if x not in neg]
            when = (f"below 0 at epochs {_epochs(neg)}, and in the paper's direction (or 0) at {_epochs(pos)}: "
                    + ("a reversal that appears late" if pos and max(pos) < min(neg) else "it changes sign"))
        out.append(f"* {c['claim']}: the difference is {when}; its {CONFIDENCE:.0%} interval lies below 0 at "
                   f"epoch{'s' if len(rev) != 1 else ''} {_epochs(rev)}.")
    return out


def flipped_claims(by_epoch: pd.DataFrame, early: int, late: int) -> pd.DataFrame:
    """The claims whose verdict at epoch ``early`` differs from that at ``late`` (columns
    ``claim, early, late``): what a shorter schedule would have concluded wrongly."""
    if by_epoch.empty:
        return pd.DataFrame(columns=["claim", "early", "late"])
    p = by_epoch.pivot_table(index="claim", columns="epoch", values="verdict", aggfunc="first")
    if early not in p or late not in p:
        return pd.DataFrame(columns=["claim", "early", "late"])
    p = p[[early, late]].dropna()
    p = p[p[early] != p[late]]
    return pd.DataFrame(dict(claim=p.index, early=p[early].to_numpy(), late=p[late].to_numpy()))


# ------------------------------------------------------------------ Fig. 2, over seeds
def fig2_compare(bg: pd.DataFrame, joint: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per separate-branch variant of :func:`background_table` ``bg``: the fraction of background
    anchors above the positive-like median (in %), separate minus ``joint``, as :func:`compare` over
    seeds (the paper's Fig. 2 says it is larger with a separate branch: ``verdict`` ``holds``)."""
    rows = []
    j = bg.loc[bg["variant"] == joint, "bg_outrank_frac"].dropna() * 100 if len(bg) else pd.Series(dtype=float)
    for v, g in bg[bg["separate"]].groupby("variant", sort=True) if len(bg) else []:
        r = compare((g["bg_outrank_frac"].dropna() * 100).tolist(), j.tolist(), confidence)
        rows.append(dict(variant=v, joint=joint, separate_pct=float(g["bg_outrank_frac"].mean() * 100),
                         joint_pct=float(j.mean()) if len(j) else math.nan, **r))
    cols = ["variant", "joint", "separate_pct", "joint_pct", "diff", "se", "dof", "lo", "hi", "p", "n_better",
            "n_worse", "verdict"]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------ what we learned, from the numbers
def _pct(x: Optional[float]) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.2f}%"


def _diff(r: pd.Series) -> str:
    if not np.isfinite(r["diff"]):
        return "no runs to compare"
    ci = " " + fmt_interval(r["lo"], r["hi"], signed=True) if np.isfinite(r["lo"]) else ""
    pd_ = r["paper_diff"]
    theirs = "" if pd_ is None or not np.isfinite(pd_) else f", {pd_:+.1f} in the paper"
    return f"{r['diff']:+.2f}{ci} AP here{theirs}"


def _need(r: pd.Series) -> str:
    if r["why"] != "within the seed spread":
        return ""
    n = r.get("seeds_needed")
    return (f"; more than {MAX_SEEDS} seeds a side at this spread" if n is None or not np.isfinite(n)
            else f"; about {int(n)} seeds a side at this spread")


DEGENERATE_AP = 1.0  # AP (%) below which a successful run counts as having trained to nothing
# The joint score the separate branches are compared with in Fig. 2: the first with a summary; the
# grid's separate branches use the Dirac box, as qfl_dirac does (gfl: DFL)
FIG2_JOINT = ("qfl_dirac", "gfl")


def degenerate_runs(ok: pd.DataFrame, below: float = DEGENERATE_AP) -> pd.DataFrame:
    """The successful runs whose AP is below ``below``: they trained to nothing (no score above the
    test threshold, or a collapsed score), so a difference involving them is a training failure."""
    return ok[ok["AP"] < below] if len(ok) else ok


def learned(claims: pd.DataFrame, info: dict[str, Any], pooled: dict[str, dict[str, Any]],
            labels: dict[str, str], ok: Optional[pd.DataFrame] = None,
            records: Optional[Sequence[dict[str, Any]]] = None,
            by_epoch: Optional[pd.DataFrame] = None, schedule: Optional[pd.DataFrame] = None) -> list[str]:
    """Markdown bullets stating the verdicts, the Fig. 2 comparison and the run size, all from the
    numbers; with ``ok`` (the successful runs), also the runs that trained to nothing; with
    ``records``, Fig. 2's difference with its interval over seeds; with ``by_epoch``
    (:func:`claims_by_epoch`), since when each reversed claim is reversed; with ``schedule``
    (:func:`schedule_gains`), how far the schedule is from a plateau."""
    counts = verdict_counts(claims)
    h, r, u = counts["holds"], counts["reversed"], counts["not_resolved"]
    lines = [f"* Of the paper's {len(claims)} claims, {h} hold{'s' if h == 1 else ''}, {r} "
             f"{'is' if r == 1 else 'are'} reversed and {u} {'is' if u == 1 else 'are'} not resolved by this "
             f"sweep (rule: {RULE})."]
    tested = int(np.isfinite(claims["p"]).sum()) if len(claims) and "p" in claims else 0
    if tested and "holm_verdict" in claims:  # with no claim tested there is nothing for chance to flip
        hc = verdict_counts(claims, "holm_verdict")
        lines.append(f"* {tested} claim{'s have' if tested != 1 else ' has'} at least two seeds a side. If none of them had a "
                     f"real difference, chance alone would still give about {chance_verdicts(claims):.1f} verdicts "
                     f"at {CONFIDENCE:.0%} each; with Holm's correction over them (any false verdict at most "
                     f"{1 - CONFIDENCE:.0%} likely) {hc['holds']} hold and {hc['reversed']} are reversed.")
    bad = degenerate_runs(ok) if ok is not None else None
    if bad is not None and len(bad):
        runs = ", ".join(f"{v} seed{'s' if len(g) > 1 else ''} {', '.join(str(int(x)) for x in g['seed'])}"
                         for v, g in bad.groupby("variant", sort=False))
        touched = [c["claim"] for _, c in claims.iterrows() if c["better"] in set(bad["variant"])
                   or c["worse"] in set(bad["variant"])] if len(claims) else []
        lines.append(f"* **Runs that trained to nothing** (AP below {DEGENERATE_AP:g}): {runs}. A verdict that "
                     "involves them measures that failure, not the representation: "
                     + ("; ".join(touched) if touched else "none of the claims") + ".")
    for verdict, head in (("holds", "Held"), ("reversed", "Reversed")):
        sel = claims[claims["verdict"] == verdict] if not claims.empty else claims
        if len(sel):
            lines.append(f"* {head}: " + "; ".join(f"{r['claim']} ({_diff(r)})" for _, r in sel.iterrows()) + ".")
    if by_epoch is not None and len(claims):
        rev = reversal_sentences(claims, by_epoch)
        if rev:
            lines.append("* Since when each reversal is there (validation AP every few epochs):\n"
                         + "\n".join("  " + s for s in rev))
        eps = sorted(set(by_epoch["epoch"]))
        if len(eps) >= 2:
            half, last = min(eps, key=lambda e: abs(e - eps[-1] / 2)), eps[-1]
            fl = flipped_claims(by_epoch, half, last)
            lines.append(f"* Stopped at epoch {half} instead of {last}, {len(fl)} of the verdicts would differ"
                         + (": " + "; ".join(f"{r['claim']} ({r['early']} then, {r['late']} at {last})"
                                             for _, r in fl.iterrows()) if len(fl) else "") + ".")
    if schedule is not None and len(schedule):
        sch = schedule_sentences(schedule, labels)
        if sch:
            lines.append("* Twice the schedule:\n" + "\n".join("  * " + s for s in sch))
    sel = claims[claims["verdict"] == "not resolved"] if not claims.empty else claims
    for why in ("within the seed spread", "fewer than 2 seeds", "not run"):
        part = sel[sel["why"] == why] if len(sel) else sel
        if len(part):
            lines.append(f"* Not resolved ({why}): " + "; ".join(
                r["claim"] + ("" if why == "not run" else f" ({_diff(r)}{_need(r)})") for _, r in part.iterrows())
                + ".")
    joint_name = next((v for v in FIG2_JOINT if v in pooled), FIG2_JOINT[0])
    fig2 = fig2_compare(background_table(records), joint_name) if records is not None else None
    jl = labels.get(joint_name, joint_name)
    for v, p in pooled.items():
        if not p["separate"]:
            continue
        row = fig2[fig2["variant"] == v] if fig2 is not None else None
        if joint_name not in pooled or row is None or row.empty or not np.isfinite(row.iloc[0]["diff"]):
            lines.append(f"* Fig. 2: {labels.get(v, v)} has its background summary, but the joint score "
                         f"({jl}) has none to compare with.")
            continue
        r = row.iloc[0]
        ci = (f", {CONFIDENCE:.0%} interval {fmt_interval(r['lo'], r['hi'], signed=True)} points over "
              f"{r['n_better']} and {r['n_worse']} seeds" if np.isfinite(r["lo"]) else
              f" (one seed on a side: no interval)")
        verdict = {"holds": "more with the separate branch, as the paper's Fig. 2 argues",
                   "reversed": "fewer with the separate branch, unlike what the paper's Fig. 2 argues",
                   "not resolved": "not resolved at this confidence"}[r["verdict"]]
        extra = ""
        if p["bg_lowcls_highq_frac"] is not None:
            extra = (f"; {_pct(p['bg_lowcls_highq_frac'])} of its background anchors have a class score below "
                     "0.1 but a quality above 0.5, the paper's examples")
        lines.append(f"* Fig. 2: with the {labels.get(v, v)}, {r['separate_pct']:.2f}% of background anchors score "
                     f"above the median positive-like anchor, against {r['joint_pct']:.2f}% for the joint score "
                     f"({jl}): {r['diff']:+.2f} points{ci}; {verdict}{extra}.")
    its = info["iterations"]
    it_txt = ("an unknown number of" if not its else str(its[0]) if len(its) == 1 else f"{its[0]}-{its[-1]}")
    size = []
    if info.get("epochs") is not None and info.get("num_train") is not None:
        size.append(f"{info['epochs']} epochs of {info['num_train']} synthetic training images")
    if info.get("num_val") is not None:
        size.append(f"AP on {info['num_val']} validation images")
    cfg = f" of `{info['config']}`" if info.get("config") else ""
    lines.append(f"* Run size: {info['ok']} successful runs{cfg} ({info['failed']} failed, {info.get('missing', 0)} not run yet), {it_txt} iterations "
                 f"each" + (f" ({', '.join(size)})" if size else "") + f", seeds {info['seeds'] or '–'}. The "
                 f"paper's numbers are {paper.SETTING}, 90k iterations of 16 images each; these are the synthetic "
                 "CPU demo, so only the directions of the differences, not the AP values, can be compared.")
    return lines
