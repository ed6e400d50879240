"""The sweep's pilot: where the spread between seeds comes from, and how many seeds a claim needs.

    python -m gflnb.study.pilot experiments/ablations/grid.yaml --variants gfl beta1 n14

For each pilot variant it reads the points' records (``gflnb sweep``) and their test-set detections
matched image by image (``evals/ID.npz``, :mod:`gflnb.study.imagewise`) and gives:

- the sd between seeds of the validation AP (the 200 images of the learning curve) and of the
  test AP (the held-out set, 2,000 images);
- the sampling sd: how much AP moves when only the test images are resampled (a bootstrap over
  images, one model at a time), pooled over seeds as a root mean variance; and the same on the 200
  validation images where the points' run folders still hold their validation detections;
- the distribution-level sd (Jordan, ICLR 2024): the seeds' variance less the sampling variance.

From the test set's seed sd it sizes the design (:func:`gflnb.study.stats.seeds_for_power`).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import stats
from .decide import BOOT_SEED, BOOTSTRAP_FILE, bootstrap, points
from .imagewise import ImageMatches, match_images, sampling_sd
from .sweep import load_grid

PILOT_VARIANTS = ("gfl", "beta1", "n14")  # the paper's GFL, its Dirac baseline, a head of another shape
DELTA = 1.0  # AP: the difference the design must resolve


def _val_matches(grid, point_id: str) -> Optional[ImageMatches]:
    """The point's validation detections matched image by image, while its run folder holds them."""
    from pycocotools.coco import COCO

    from ..data.synth import dataset_paths
    det = grid.out / "runs" / point_id / "val_results.json"
    root = grid.parameters.get("data_root")
    if not det.exists() or not root:
        return None
    ann, _ = dataset_paths((grid.notebook.parent / root).resolve(), "val")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
    return match_images(gt, json.loads(det.read_text()))


def spread_table(grid_file: str | Path, variants: Sequence[str] = PILOT_VARIANTS, n_boot: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
    """One row per variant: seeds, mean and sd between seeds of the validation and test AP, the
    sampling sd on each set and the distribution-level sd (all AP in %). The test set's resamples are
    the verdicts' own (:func:`gflnb.study.decide.bootstrap`, kept in the sweep's ``bootstrap.npz``
    when ``seed`` is theirs)."""
    grid = load_grid(grid_file)
    pts = points(grid)
    pts = pts[pts["variant"].isin(variants)]
    boot = bootstrap(pts, grid.out / BOOTSTRAP_FILE if seed == BOOT_SEED else None, n_boot, seed)
    rows = []
    for v in variants:
        own = pts[pts["variant"] == v]
        val, test = own["val_AP"].tolist(), own["test_AP"].tolist()
        samp_test = [float(boot[i].var(ddof=1)) for i in own["id"]]
        samp_val = [sampling_sd(vm, n_boot, seed) ** 2 for vm in map(lambda i: _val_matches(grid, i), own["id"])
                    if vm is not None]
        n = len(test)
        sd = lambda x: float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan  # noqa: E731
        s_val, s_test = sd(val), sd(test)
        m_test = math.sqrt(np.mean(samp_test)) if samp_test else math.nan
        m_val = math.sqrt(np.mean(samp_val)) if samp_val else math.nan
        rows.append(dict(variant=v, seeds=n, val_AP=float(np.mean(val)) if n else math.nan, val_seed_sd=s_val,
                         val_sampling_sd=m_val, test_AP=float(np.mean(test)) if n else math.nan, test_seed_sd=s_test,
                         test_sampling_sd=m_test,
                         dist_sd=stats.distribution_sd(s_test, m_test) if n >= 2 else math.nan,
                         dist_sd_val=stats.distribution_sd(s_val, m_val) if n >= 2 and samp_val else math.nan))
    return pd.DataFrame(rows)


def design(table: pd.DataFrame, claims: int, delta: float = DELTA, seeds: Sequence[int] = (5, 8, 10)) -> dict:
    """Seeds a side for ``delta`` at 80% power from the largest test-set seed sd of the pilot, alone
    (alpha 0.05) and with the strictest of Holm's steps over ``claims`` (alpha 0.05 / claims), and the
    difference that ``seeds`` resolve at each."""
    sd = float(table["test_seed_sd"].max())
    alpha = 1 - stats.CONFIDENCE
    return dict(sd=sd, delta=delta, claims=claims,
                seeds_alone=stats.seeds_for_power(delta, sd, alpha),
                seeds_holm=stats.seeds_for_power(delta, sd, alpha / claims),
                detectable={n: dict(alone=stats.detectable_difference(sd, n, alpha),
                                    holm=stats.detectable_difference(sd, n, alpha / claims)) for n in seeds})


def markdown(table: pd.DataFrame, d: dict, n_val: int = 200, n_test: int = 2000) -> str:
    v, t = f"{n_val:,}", f"{n_test:,}"
    cols = {"variant": "variant", "seeds": "seeds", "val_AP": f"AP ({v})", "val_seed_sd": f"seed sd ({v})",
            "val_sampling_sd": f"sampling sd ({v})", "test_AP": f"AP ({t})", "test_seed_sd": f"seed sd ({t})",
            "test_sampling_sd": f"sampling sd ({t})", "dist_sd": "distribution sd"}
    shown = table[list(cols)].rename(columns=cols)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for _, r in shown.iterrows():
        lines.append("| " + " | ".join(str(x) if isinstance(x, (str, int, np.integer)) else f"{x:.2f}"
                                       for x in r.values) + " |")
    lines.append("")
    lines.append(f"Planning sd (the largest seed sd on {t} images): {d['sd']:.2f} AP. Seeds a side to resolve "
                 f"{d['delta']:.1f} AP with 80% power: {d['seeds_alone']} at alpha 0.05, {d['seeds_holm']} at "
                 f"alpha 0.05/{d['claims']} (Holm's strictest step).")
    for n, x in d["detectable"].items():
        lines.append(f"- {n} seeds a side resolve {x['alone']:.2f} AP alone, {x['holm']:.2f} AP under Holm's "
                     f"strictest step (80% power)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    from . import paper
    ap = argparse.ArgumentParser(prog="python -m gflnb.study.pilot", description=__doc__.splitlines()[0])
    ap.add_argument("grid")
    ap.add_argument("--variants", nargs="+", default=list(PILOT_VARIANTS))
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the images")
    a = ap.parse_args(argv)
    table = spread_table(a.grid, a.variants, a.boot)
    par = load_grid(a.grid).parameters
    print(markdown(table, design(table, len(paper.CLAIMS)), par.get("num_val", 200), par.get("num_test", 0)))


if __name__ == "__main__":
    main()
