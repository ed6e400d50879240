"""Chapter 5's measurement: is a learned distribution's spread explained by the edge's ambiguity?

The unit of resampling is the object, not the edge: the four sides of one object share an image, a
detection and its features, so treating 4n edges as independent would make every interval too
narrow. Every interval here is a percentile bootstrap over objects, seeded, so that a chapter prints
the same interval on every run (:func:`boot_mean`, :func:`boot_pearson`, :func:`boot_contrast`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..data.synth import OCCLUSION_MIN
from ..study.stats import fmt_estimate

EDGE_KINDS = ("clear", "blurred", "occluded", "blurred+occluded")
# Bimodality (the paper's appendix F: "two plausible edges"): a second local maximum of at least
# BIMODAL_MIN_PEAK of the highest, separated from it by a valley below BIMODAL_MAX_DIP of the lower peak.
BIMODAL_MIN_PEAK = 0.2
BIMODAL_MAX_DIP = 0.7
CONFIDENCE = 0.95


def edge_kind(blur: Sequence[float], occlusion: Sequence[float]) -> np.ndarray:
    """``EDGE_KINDS`` per edge from its recorded blur sigma and occluded fraction."""
    b = np.asarray(blur, float) > 0
    o = np.asarray(occlusion, float) >= OCCLUSION_MIN
    return np.select([b & o, b, o], ["blurred+occluded", "blurred", "occluded"], "clear")


def is_bimodal(p: np.ndarray, min_peak: float = BIMODAL_MIN_PEAK, max_dip: float = BIMODAL_MAX_DIP) -> np.ndarray:
    """Per distribution on the last axis (bins 0..R): two separated peaks? ``p [..., R+1]`` -> bool [...]."""
    p = np.asarray(p, float)
    flat = p.reshape(-1, p.shape[-1])
    out = np.zeros(len(flat), bool)
    for n, q in enumerate(flat):
        padded = np.concatenate([[-1.0], q, [-1.0]])
        peaks = [i for i in range(len(q)) if padded[i + 1] > padded[i] and padded[i + 1] >= padded[i + 2]]
        top = max(peaks, key=lambda i: q[i])
        for i in peaks:
            if i == top or q[i] < min_peak * q[top]:
                continue
            lo, hi = sorted((i, top))
            if q[lo:hi + 1].min() < max_dip * q[i]:
                out[n] = True
                break
    return out.reshape(p.shape[:-1])


def _weights(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_clusters]``: how often each cluster is drawn in each bootstrap replicate."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot).astype(float)


def _interval(est: float, reps: np.ndarray, confidence: float) -> tuple[float, float, float]:
    reps = reps[np.isfinite(reps)]
    if not len(reps):
        return est, math.nan, math.nan
    a = (1 - confidence) / 2
    return est, float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))


def _sums(clusters: np.ndarray, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per cluster, the sum of each column: the sufficient statistics of means and moments, so that
    a replicate is a weighted sum rather than a resampled table."""
    return pd.DataFrame(cols).groupby(clusters).sum()


def boot_mean(df: pd.DataFrame, col: str, cluster: str = "ann_id", n_boot: int = 2000, seed: int = 0,
              confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``df[col]``, the interval from resampling whole clusters (objects)."""
    if df.empty:
        return math.nan, math.nan, math.nan
    x = df[col].to_numpy(float)
    s = _sums(df[cluster].to_numpy(), dict(x=x, n=np.ones(len(x))))
    w = _weights(len(s), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (w @ s["x"].to_numpy()) / (w @ s["n"].to_numpy())
    return _interval(float(x.mean()), reps, confidence)


def _r(sx, sy, sxx, syy, sxy, n):
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy / n - (sx / n) * (sy / n)
        vx, vy = sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
        return cov / np.sqrt(vx * vy)


def boot_pearson(df: pd.DataFrame, x: str, y: str, cluster: str = "ann_id", n_boot: int = 2000, seed: int = 0,
                 confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(r, low, high)``: Pearson's r of two columns, the interval from resampling whole clusters."""
    d = df[[x, y, cluster]].dropna()
    a, b = d[x].to_numpy(float), d[y].to_numpy(float)
    if len(d) < 3 or a.std() == 0 or b.std() == 0:
        return math.nan, math.nan, math.nan
    s = _sums(d[cluster].to_numpy(), dict(x=a, y=b, xx=a * a, yy=b * b, xy=a * b, n=np.ones(len(a))))
    w = _weights(len(s), n_boot, seed)
    reps = _r(*(w @ s[k].to_numpy() for k in ("x", "y", "xx", "yy", "xy", "n")))
    return _interval(float(np.corrcoef(a, b)[0, 1]), reps, confidence)


def boot_contrast(df: pd.DataFrame, col: str, group: str, a: str, b: str, cluster: str = "ann_id",
                  n_boot: int = 2000, seed: int = 0, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(difference, low, high)``: mean ``col`` where ``group == a`` minus where ``group == b``,
    objects resampled as wholes (an object may have edges in both groups)."""
    d = df[df[group].isin([a, b])]
    ia, ib = (d[group] == a).to_numpy(float), (d[group] == b).to_numpy(float)
    if not ia.any() or not ib.any():
        return math.nan, math.nan, math.nan
    v = d[col].to_numpy(float)
    s = _sums(d[cluster].to_numpy(), dict(sa=v * ia, na=ia, sb=v * ib, nb=ib))
    w = _weights(len(s), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (w @ s["sa"].to_numpy()) / (w @ s["na"].to_numpy()) - (w @ s["sb"].to_numpy()) / (w @ s["nb"].to_numpy())
    return _interval(float(v[ia > 0].mean() - v[ib > 0].mean()), reps, confidence)


def by_kind(edges: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per edge kind: edges, objects, and the mean entropy, std (bins and px) and bimodal share, each
    with its bootstrap interval (columns ``X``, ``X_lo``, ``X_hi``)."""
    rows = []
    for kind in EDGE_KINDS:
        d = edges[edges["kind"] == kind]
        if d.empty:
            continue
        row = dict(kind=kind, edges=len(d), objects=d["ann_id"].nunique())
        for col in ("entropy", "std_bins", "std_px", "bimodal"):
            est, lo, hi = boot_mean(d, col, n_boot=n_boot, seed=seed)
            row.update({col: est, f"{col}_lo": lo, f"{col}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows).set_index("kind")


def correlations(edges: pd.DataFrame, pairs: Sequence[tuple[str, str]], n_boot: int = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """Pearson r of each ``(x, y)`` over all edges, with its bootstrap interval over objects."""
    rows = []
    for x, y in pairs:
        est, lo, hi = boot_pearson(edges, x, y, n_boot=n_boot, seed=seed)
        rows.append(dict(x=x, y=y, r=est, lo=lo, hi=hi, edges=int(edges[[x, y]].dropna().shape[0])))
    return pd.DataFrame(rows)


def pick_objects(edges: pd.DataFrame, n: int) -> list[tuple[int, str]]:
    """``(ann_id, kind)`` for a gallery of ``n`` objects: a third clear on all four sides (the ones
    with the sharpest distributions), a third with the most ambiguous blurred side, a third with the
    most ambiguous occluded side. Without recorded ambiguity: the sharpest and the flattest."""
    if "kind" not in edges:
        per = edges.groupby("ann_id")["entropy"].mean().sort_values(kind="stable")
        return [(int(a), "sharpest") for a in per.index[: n // 2]] + \
            [(int(a), "flattest") for a in per.index[len(per) - (n - n // 2):]]
    per = edges.groupby("ann_id").agg(kinds=("kind", set), entropy=("entropy", "mean"))
    k = max(1, n // 3)
    clear = per[per["kinds"] == {"clear"}].sort_values("entropy", kind="stable").index[:k]
    chosen = [(int(a), "clear") for a in clear]
    for kind in ("blurred", "occluded"):
        rows = edges[(edges["kind"] == kind) & ~edges["ann_id"].isin([a for a, _ in chosen])]
        top = rows.groupby("ann_id")["ambiguity"].max().sort_values(ascending=False, kind="stable").index[:k]
        chosen += [(int(a), kind) for a in top]
    return chosen[:n]


def interval_table(kinds: pd.DataFrame) -> pd.DataFrame:
    """:func:`by_kind` as a readable table: each statistic as ``estimate [low, high]`` (the std in
    pixels, which mixes levels, stays in :func:`by_kind`'s columns)."""
    def fmt(col: str, digits: int) -> pd.Series:
        return kinds.apply(lambda r: fmt_estimate(r[col], r[col + "_lo"], r[col + "_hi"], digits), axis=1)
    return pd.DataFrame({"edges": kinds["edges"], "objects": kinds["objects"], "entropy (nats)": fmt("entropy", 2),
                         "std (bins)": fmt("std_bins", 2),
                         "bimodal (%)": (kinds[["bimodal", "bimodal_lo", "bimodal_hi"]] * 100).pipe(
                             lambda b: b.apply(lambda r: fmt_estimate(r.bimodal, r.bimodal_lo, r.bimodal_hi, 1),
                                               axis=1))})


def _interval_verdict(lo: float, hi: float) -> str:
    """Above zero, below zero, or an interval that covers zero."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "not measured"
    return "holds" if lo > 0 else "reversed" if hi < 0 else "not resolved"


def findings(edges: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The paper's claims about learned distributions, each tested on these edges.

    A claim *holds* when its 95% interval lies above zero, is *reversed* when below, and is *not
    resolved* when the interval covers zero. Columns: claim, statistic, estimate, lo, hi, verdict.
    """
    rows = []

    def add(claim: str, statistic: str, est: tuple[float, float, float]) -> None:
        rows.append(dict(claim=claim, statistic=statistic, estimate=est[0], lo=est[1], hi=est[2],
                         verdict=_interval_verdict(est[1], est[2])))
    if "kind" in edges:
        for kind in ("blurred", "occluded"):
            if (edges["kind"] == kind).any():
                add(f"{kind} edges get flatter distributions than clear ones",
                    f"the mean entropy of {kind} minus that of clear edges (nats)",
                    boot_contrast(edges, "entropy", "kind", kind, "clear", n_boot=n_boot, seed=seed))
        add("the more ambiguous the edge, the flatter its distribution", "r(ambiguity, entropy)",
            boot_pearson(edges, "ambiguity", "entropy", n_boot=n_boot, seed=seed))
        blurred = edges[edges["blur"] > 0]
        if len(blurred) >= 3:
            add("a wider blur gives a wider distribution", "on blurred edges, r(blur sigma, std), both in bins",
                boot_pearson(blurred, "blur_bins", "std_bins", n_boot=n_boot, seed=seed))
        amb = edges.assign(unclear=np.where(edges["kind"] == "clear", "no", "yes"))
        add("bimodal distributions (two plausible edges) are more common on unclear edges",
            "the bimodal share of unclear minus that of clear edges",
            boot_contrast(amb, "bimodal", "unclear", "yes", "no", n_boot=n_boot, seed=seed))
    add("a flat distribution marks an edge that is actually misplaced", "r(entropy, |error|)",
        boot_pearson(edges, "entropy", "abs_err_px", n_boot=n_boot, seed=seed))
    return pd.DataFrame(rows)


# A verdict whose interval's end nearer zero is closer to zero than this fraction of the estimate is
# named as the one another trained model is likeliest to flip
EDGE_FRACTION = 0.25


def describe_findings(found: pd.DataFrame, kinds: Optional[pd.DataFrame] = None) -> list[str]:
    """One markdown sentence per finding, written from its numbers and verdict."""
    said = {"holds": "holds", "reversed": "is **reversed** here", "not resolved": "is **not resolved** here",
            "not measured": "could not be measured"}
    lines = []
    for f in found.itertuples():
        lines.append(f"* *{f.claim[0].upper() + f.claim[1:]}*: {said[f.verdict]}; {f.statistic} is {f.estimate:+.3f} "
                     f"(95% interval {f.lo:+.3f} to {f.hi:+.3f}, over objects).")
    if kinds is not None and "bimodal" in kinds:
        parts = [f"{k} {100 * r.bimodal:.1f}% (95% interval {100 * r.bimodal_lo:.1f}-{100 * r.bimodal_hi:.1f}%)"
                 for k, r in kinds.iterrows()]
        lines.append("* Bimodal distributions (two separated peaks, as in the paper's appendix F), by edge kind: "
                     + "; ".join(parts) + ".")
    near = [f.claim for f in found.itertuples() if f.verdict in ("holds", "reversed")
            and min(abs(f.lo), abs(f.hi)) < EDGE_FRACTION * abs(f.estimate)]
    lines.append("* **These verdicts are about one trained model.** The intervals resample the objects this "
                 "checkpoint sees, not training runs: another seed, or the same command on a CPU that rounds "
                 "differently, trains another model, whose estimates can fall outside these intervals. "
                 + (f"Nearest to flipping (an interval end within {EDGE_FRACTION:.0%} of the estimate from zero): "
                    + "; ".join(near) + "." if near else
                    f"No verdict's interval ends within {EDGE_FRACTION:.0%} of its estimate from zero."))
    return lines
