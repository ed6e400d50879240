"""Chapter 7's numbers: the sweep's table (``gflnb sweep``) read, summarised over seeds, set beside
the paper's tables (:mod:`gflnb.paper`), and each of the paper's claims given a verdict.

The verdict rule (:func:`compare`): with ``a`` the per-seed AP of the variant the paper says is
better and ``b`` the other's, ``d = mean(a) - mean(b)`` and Welch's standard error
``se = sqrt(var(a)/n_a + var(b)/n_b)`` (sample variances). The claim *holds* when ``d > K_SE * se``,
is *reversed* when ``d < -K_SE * se``, and is *not resolved* otherwise, and whenever either
variant has fewer than 2 successful seeds (no spread, so no rule can be applied).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from . import paper

K_SE = 2.0
VERDICTS = ("holds", "reversed", "not resolved")
RULE = (f"a claim holds when the mean AP difference in the paper's direction exceeds {K_SE:g} x its "
        "standard error (Welch's, from the per-seed values: sqrt(s_a^2/n_a + s_b^2/n_b)), is reversed when "
        "it exceeds that in the other direction, and is not resolved otherwise or when either variant has "
        "fewer than 2 successful seeds")
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ------------------------------------------------------------------ the verdict rule
def compare(better: Sequence[float], worse: Sequence[float], k: float = K_SE) -> dict[str, Any]:
    """``dict(diff, se, n_better, n_worse, verdict)`` for per-seed values of the two variants.

    ``diff = mean(better) - mean(worse)`` (nan when either is empty), ``se`` Welch's standard error
    (nan with fewer than 2 values on a side); NaNs among the values are dropped.
    """
    a = np.asarray([v for v in better if v is not None and np.isfinite(v)], np.float64)
    b = np.asarray([v for v in worse if v is not None and np.isfinite(v)], np.float64)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if len(a) >= 2 and len(b) >= 2 else math.nan
    if math.isnan(se):
        verdict = "not resolved"
    elif diff > k * se:
        verdict = "holds"
    elif diff < -k * se:
        verdict = "reversed"
    else:
        verdict = "not resolved"
    return dict(diff=diff, se=se, n_better=int(len(a)), n_worse=int(len(b)), verdict=verdict)


# ------------------------------------------------------------------ reading the sweep
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
    """The grid file as a mapping ({} when it is missing or unreadable)."""
    import yaml
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        g = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        warnings.warn(f"{path}: not YAML ({e})")
        return {}
    return g if isinstance(g, dict) else {}


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
                                   missing=int(((df["variant"] == v) & (df["status"] == "missing")).sum())
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


def claim_table(df: pd.DataFrame, claims: Sequence[dict[str, str]] = paper.CLAIMS, k: float = K_SE) -> pd.DataFrame:
    """One row per claim: the paper's and this sweep's AP difference (better - worse), the standard
    error, the seeds on each side, the verdict of :func:`compare` and why an unresolved one is."""
    ok = ok_rows(df)
    rows = []
    for c in claims:
        def ap(v: str) -> list[float]:
            return ok.loc[ok["variant"] == v, "AP"].tolist() if not ok.empty else []
        r = compare(ap(c["better"]), ap(c["worse"]), k)
        if r["verdict"] != "not resolved":
            why = ""
        elif min(r["n_better"], r["n_worse"]) == 0:
            why = "not run"
        elif min(r["n_better"], r["n_worse"]) < 2:
            why = "fewer than 2 seeds"
        else:
            why = "within the seed spread"
        rows.append(dict(claim=c["claim"], table=c["table"], better=c["better"], worse=c["worse"],
                         paper_diff=paper.paper_diff(c), diff=r["diff"], se=r["se"], n_better=r["n_better"],
                         n_worse=r["n_worse"], verdict=r["verdict"], why=why))
    return pd.DataFrame(rows)


def verdict_counts(claims: pd.DataFrame) -> dict[str, int]:
    """``dict(holds, reversed, not_resolved)`` counts (they add up to the number of claims)."""
    v = claims["verdict"] if not claims.empty else pd.Series(dtype=str)
    return dict(holds=int((v == "holds").sum()), reversed=int((v == "reversed").sum()),
                not_resolved=int((v == "not resolved").sum()))


def run_info(df: pd.DataFrame, grid: dict[str, Any]) -> dict[str, Any]:
    """Run counts and size: runs, ok, failed, missing (not run yet: a sweep over several sittings),
    variants, seeds, iterations (sorted distinct values of the successful runs), and from the grid's
    parameters config, num_train, num_val, epochs (None if absent)."""
    ok = ok_rows(df)
    par = grid.get("parameters") or {}
    its = sorted({int(i) for i in ok["iterations"].dropna()}) if "iterations" in ok and not ok.empty else []
    missing = int((df["status"] == "missing").sum()) if "status" in df else 0
    return dict(runs=int(len(df)), ok=int(len(ok)), failed=int(len(df) - len(ok) - missing), missing=missing,
                variants=int(ok["variant"].nunique()) if not ok.empty else 0,
                seeds=sorted(int(s) for s in ok["seed"].dropna().unique()) if not ok.empty else [],
                iterations=its, config=par.get("config"), num_train=par.get("num_train"),
                num_val=par.get("num_val"), epochs=par.get("epochs"))


# ------------------------------------------------------------------ the Fig. 2 records
def background_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per record with a ``background`` summary (gflnb.analysis.background_summary)."""
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


# ------------------------------------------------------------------ what we learned, from the numbers
def _pct(x: Optional[float]) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.2f}%"


def _diff(r: pd.Series) -> str:
    if not np.isfinite(r["diff"]):
        return "no runs to compare"
    se = f" ± {r['se']:.2f}" if np.isfinite(r["se"]) else ""
    pd_ = r["paper_diff"]
    theirs = "" if pd_ is None or not np.isfinite(pd_) else f", {pd_:+.1f} in the paper"
    return f"{r['diff']:+.2f}{se} AP here{theirs}"


DEGENERATE_AP = 1.0  # AP (%) below which a successful run counts as having trained to nothing
# The joint score the separate branches are compared with in Fig. 2: the first with a summary; the
# grid's separate branches use the Dirac box, as qfl_dirac does (gfl: DFL)
FIG2_JOINT = ("qfl_dirac", "gfl")


def degenerate_runs(ok: pd.DataFrame, below: float = DEGENERATE_AP) -> pd.DataFrame:
    """The successful runs whose AP is below ``below``: they trained to nothing (no score above the
    test threshold, or a collapsed score), so a difference involving them is a training failure."""
    return ok[ok["AP"] < below] if len(ok) else ok


def learned(claims: pd.DataFrame, info: dict[str, Any], pooled: dict[str, dict[str, Any]],
            labels: dict[str, str], ok: Optional[pd.DataFrame] = None) -> list[str]:
    """Markdown bullets stating the verdicts, the Fig. 2 comparison and the run size, all from the
    numbers; with ``ok`` (the successful runs), also the runs that trained to nothing."""
    counts = verdict_counts(claims)
    h, r, u = counts["holds"], counts["reversed"], counts["not_resolved"]
    lines = [f"* Of the paper's {len(claims)} claims, {h} hold{'s' if h == 1 else ''}, {r} "
             f"{'is' if r == 1 else 'are'} reversed and {u} {'is' if u == 1 else 'are'} not resolved by this "
             f"sweep (rule: {RULE})."]
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
    sel = claims[claims["verdict"] == "not resolved"] if not claims.empty else claims
    for why in ("within the seed spread", "fewer than 2 seeds", "not run"):
        part = sel[sel["why"] == why] if len(sel) else sel
        if len(part):
            lines.append(f"* Not resolved ({why}): " + "; ".join(
                r["claim"] + ("" if why == "not run" else f" ({_diff(r)})") for _, r in part.iterrows()) + ".")
    joint_name = next((v for v in FIG2_JOINT if v in pooled), FIG2_JOINT[0])
    joint = pooled.get(joint_name)
    for v, p in pooled.items():
        if not p["separate"]:
            continue
        if joint is None or p["bg_outrank_frac"] is None or joint["bg_outrank_frac"] is None:
            lines.append(f"* Fig. 2: {labels.get(v, v)} has its background summary, but the joint score "
                         f"({labels.get(joint_name, joint_name)}) has none to compare with.")
            continue
        a, b = p["bg_outrank_frac"], joint["bg_outrank_frac"]
        rel = "more" if a > b else "fewer" if a < b else "as many"
        agree = "as the paper's Fig. 2 argues" if a > b else "unlike what the paper's Fig. 2 argues"
        extra = ""
        if p["bg_lowcls_highq_frac"] is not None:
            extra = (f"; {_pct(p['bg_lowcls_highq_frac'])} of its background anchors have a class score below "
                     "0.1 but a quality above 0.5, the paper's examples")
        lines.append(f"* Fig. 2: with the {labels.get(v, v)}, {_pct(a)} of background anchors score above the "
                     f"median positive-like anchor (mean over {p['seeds']} seed(s)), against {_pct(b)} for the "
                     f"joint score, {labels.get(joint_name, joint_name)} (over {joint['seeds']}): {rel} with the "
                     f"separate branch, {agree}{extra}.")
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
