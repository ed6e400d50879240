"""The statistics that decide a claim from seeds: Welch's interval, Holm's correction across claims,
TOST for the paper's ties, the power of a design, and a run's spread split into the part its test
images add and the part its training adds (Jordan, ICLR 2024).

Every function takes per-seed values (AP in %) or standard deviations and is tested against numbers
computed by hand (tests/test_stats.py).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

CONFIDENCE = 0.95
POWER = 0.80  # the design's chance of resolving a true difference of the planned size


def fmt_interval(lo: float, hi: float, digits: int = 2, signed: bool = False) -> str:
    """An interval as the chapters print it: ``[0.45, 2.01]``, or ``[+0.45, +2.01]`` when ``signed``."""
    spec = f"{'+' if signed else ''}.{digits}f"
    return f"[{lo:{spec}}, {hi:{spec}}]"


def fmt_estimate(x: float, lo: float, hi: float, digits: int = 2, signed: bool = False) -> str:
    """An estimate and its interval: ``1.23 [0.45, 2.01]``, or ``+1.23 [+0.45, +2.01]`` when ``signed``."""
    return f"{x:{'+' if signed else ''}.{digits}f} {fmt_interval(lo, hi, digits, signed)}"


def _values(x: Sequence[float]) -> np.ndarray:
    return np.asarray([v for v in x if v is not None and np.isfinite(v)], np.float64)


def t_interval(diff: float, se: float, dof: float, confidence: float = CONFIDENCE) -> dict[str, float]:
    """``dict(diff, se, dof, lo, hi, p)``: the ``confidence`` interval ``diff +- t_dof se`` and the
    two-sided p of ``diff = 0``. With ``se = 0`` the interval is the difference itself, and ``p`` is 0
    where it differs from 0 and 1 where it does not."""
    from scipy import stats
    if se == 0:
        return dict(diff=diff, se=0.0, dof=math.inf, lo=diff, hi=diff, p=0.0 if diff != 0 else 1.0)
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
    return dict(diff=diff, se=se, dof=float(dof), lo=diff - half, hi=diff + half,
                p=float(2 * stats.t.sf(abs(diff) / se, dof)))


def welch(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, float]:
    """``dict(diff, se, dof, lo, hi, p)`` of ``mean(a) - mean(b)`` (at least 2 values a side), with the
    Welch-Satterthwaite degrees of freedom (:func:`t_interval`)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = float(a.mean() - b.mean()), math.sqrt(va + vb)
    if se == 0:
        return t_interval(diff, 0.0, math.inf, confidence)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t_interval(diff, se, dof, confidence)


def verdict(lo: float, hi: float) -> str:
    """A claim's verdict from its interval ``[lo, hi]`` of ``better - worse``: ``holds`` above 0,
    ``reversed`` below it, ``not resolved`` when it holds 0."""
    return "holds" if lo > 0 else "reversed" if hi < 0 else "not resolved"


def holm(p: Sequence[float], alpha: float = 1 - CONFIDENCE) -> list[bool]:
    """Holm's step-down: which p-values are rejected with the family-wise error rate kept at ``alpha``.
    NaN p-values (claims without two seeds a side) are neither tested nor counted."""
    order = sorted((i for i, x in enumerate(p) if np.isfinite(x)), key=lambda i: p[i])
    rejected = [False] * len(p)
    for rank, i in enumerate(order):
        if p[i] > alpha / (len(order) - rank):
            break
        rejected[i] = True
    return rejected


def tost(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 1 - CONFIDENCE) -> dict[str, float]:
    """Two one-sided Welch tests that ``mean(a) - mean(b)`` lies within ``(-margin, margin)``
    (Schuirmann 1987): :func:`tost_se` with Welch's difference, standard error and degrees of freedom."""
    x, y = _values(a), _values(b)
    if len(x) < 2 or len(y) < 2:
        return dict(diff=math.nan, lo=math.nan, hi=math.nan, p=math.nan, equivalent=False, margin=margin)
    w = welch(x, y)
    return tost_se(w["diff"], w["se"], w["dof"], margin, alpha)


def tost_se(diff: float, se: float, dof: float, margin: float, alpha: float = 1 - CONFIDENCE) -> dict[str, float]:
    """TOST from a difference, its standard error and degrees of freedom: ``dict(diff, lo, hi, p,
    equivalent, margin)``, where ``[lo, hi]`` is the ``1 - 2 alpha`` interval, ``p`` the larger
    one-sided p, and ``equivalent`` is ``p < alpha`` (the same as the interval lying inside the margin)."""
    from scipy import stats
    w = t_interval(diff, se, dof, 1 - 2 * alpha)
    if se == 0:
        inside = abs(diff) < margin
        return dict(diff=diff, lo=w["lo"], hi=w["hi"], p=0.0 if inside else 1.0, equivalent=inside, margin=margin)
    p_low = float(stats.t.sf((diff + margin) / se, dof))  # H0: diff <= -margin
    p_high = float(stats.t.cdf((diff - margin) / se, dof))  # H0: diff >= +margin
    p = max(p_low, p_high)
    return dict(diff=diff, lo=w["lo"], hi=w["hi"], p=p, equivalent=p < alpha, margin=margin)


def power(delta: float, sd: float, n: int, alpha: float = 1 - CONFIDENCE, floor: float = 0.0) -> float:
    """The chance that a two-sided two-sample t test (``n`` seeds a side, equal spread ``sd``) at
    level ``alpha`` resolves a true difference ``delta``: the noncentral t with ``2n - 2`` degrees of
    freedom and noncentrality ``delta / sqrt(2 sd^2 / n + floor^2)``.

    ``floor`` is a part of the standard error that more seeds do not shrink: a claim's evaluation
    part, the one test set every seed is measured on. With it the power stops rising at
    ``delta / floor``, however many seeds are run."""
    from scipy import stats
    if n < 2:
        return 0.0
    dof = 2 * n - 2
    se = math.sqrt(2.0 * sd ** 2 / n + floor ** 2)
    ncp = abs(delta) / se if se > 0 else math.inf
    crit = float(stats.t.ppf(1 - alpha / 2, dof))
    if math.isinf(ncp):
        return 1.0
    p = float(stats.nct.sf(crit, dof, ncp) + stats.nct.cdf(-crit, dof, ncp))
    if not math.isfinite(p):  # scipy's noncentral t returns NaN at a few large noncentralities
        p = float(stats.norm.sf(crit - ncp) + stats.norm.cdf(-crit - ncp))
    return p


def seeds_for_power(delta: float, sd: float, alpha: float = 1 - CONFIDENCE, target: float = POWER,
                    max_seeds: int = 1000, floor: float = 0.0) -> Optional[int]:
    """The fewest seeds a side at which :func:`power` reaches ``target`` (None beyond ``max_seeds``,
    with no spread measured, or where the ``floor`` alone keeps it out of reach)."""
    if not math.isfinite(sd) or not math.isfinite(floor):
        return None
    for n in range(2, max_seeds + 1):
        if power(delta, sd, n, alpha, floor) >= target:
            return n
    return None


def detectable_difference(sd: float, n: int, alpha: float = 1 - CONFIDENCE, target: float = POWER,
                          floor: float = 0.0) -> float:
    """The smallest true difference that ``n`` seeds a side resolve with chance ``target`` (``floor``
    as in :func:`power`)."""
    from scipy import optimize
    if not math.isfinite(sd) or not math.isfinite(floor):
        return math.nan
    if n < 2:
        return math.inf
    if sd == 0 and floor == 0:
        return 0.0
    from scipy import stats
    crit = float(stats.t.ppf(1 - alpha / 2, 2 * n - 2))
    top = (crit + 10) * math.sqrt(2.0 * sd ** 2 / n + floor ** 2)  # noncentrality 10 past the critical value
    return float(optimize.brentq(lambda d: power(d, sd, n, alpha, floor) - target, 1e-9, top))


def distribution_sd(seed_sd: float, own_sampling_sd: float) -> float:
    """The spread between seeds that remains on the distribution the test set was drawn from: the
    observed variance between seeds minus the sampling variance that is each model's own (Jordan,
    ICLR 2024: for accuracy ``mean_x p_x (1 - p_x) / n``, the examples on which runs disagree),
    floored at 0.

    Only the model's own part adds to the spread between seeds: what the test images do alike to
    every model of a variant (hard images are hard for all of them) moves their mean, not their
    spread. For AP, :func:`gflnb.study.decide.own_sampling_var` estimates that part from a bootstrap
    over the images."""
    return math.sqrt(max(seed_sd ** 2 - own_sampling_sd ** 2, 0.0))
