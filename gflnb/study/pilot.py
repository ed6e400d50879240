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
from . import finaltest
from .decide import BOOT_SEED, BOOTSTRAP_FILE, bootstrap, evaluation_parts, own_sampling_var, points
from .imagewise import ImageMatches, aps_on, bootstrap_weights, match_images
from .sweep import load_grid

PILOT_VARIANTS = ("gfl", "beta1", "n14")  # the paper's GFL, its Dirac baseline, a head of another shape
PILOT_PAIRS = (("gfl", "beta1"), ("gfl", "n14"))  # the pilot's pairs: a claim's evaluation part, measured
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
                 seed: int = 0, val: bool = True, write_cache: bool = True) -> pd.DataFrame:
    """One row per variant and set: the validation images (``val_``), the test images each training
    run measured (``test_``) and, where the grid names one, the final test set (``final_``). For each:
    seeds, mean AP, sd between seeds, one model's sampling sd (the bootstrap over images, root mean
    variance over the seeds), the part of it that is each model's own
    (:func:`gflnb.study.decide.own_sampling_var`) and the distribution-level sd
    (:func:`gflnb.study.stats.distribution_sd`), all AP in %. The test sets' resamples are the
    verdicts' own (:func:`gflnb.study.decide.bootstrap`, kept in the sweep's ``bootstrap.npz`` when
    ``seed`` is theirs; ``write_cache=False`` leaves it as it is); the validation set's need each
    point's run folder (``val=False`` skips them)."""
    grid = load_grid(grid_file)
    cache = grid.out / BOOTSTRAP_FILE if seed == BOOT_SEED else None
    sets = {"test": points(grid, "run")}
    if finaltest.spec(grid) is not None:
        sets["final"] = points(grid, "final")
    boots = {k: bootstrap(v[v["variant"].isin(variants)], cache, n_boot, seed, write=write_cache)
             for k, v in sets.items()}
    rows = []
    for v in variants:
        r: dict = dict(variant=v)
        run = sets["test"][sets["test"]["variant"] == v]
        val_matches = [m for m in (_val_matches(grid, i) for i in run["id"]) if m is not None] if val else []
        val_boot = (np.stack([aps_on(m, bootstrap_weights(len(m.img_ids), n_boot, seed)) for m in val_matches], 1)
                    if len(val_matches) == len(run) and len(run) else None)
        parts = [("val", run["val_AP"], val_boot, int(grid.parameters.get("num_val", 0)))]
        for k, frame in sets.items():
            own = frame[frame["variant"] == v]
            parts.append((k, own["test_AP"], boots[k][list(own["id"])].to_numpy(),
                          int(own["test_images"].iloc[0]) if len(own) else 0))
        for part, values, b, images in parts:
            n = len(values)
            r[f"{part}_seeds"], r[f"{part}_images"] = n, images
            r[f"{part}_AP"] = float(values.mean()) if n else math.nan
            r[f"{part}_seed_sd"] = float(values.std(ddof=1)) if n >= 2 else math.nan
            b = None if b is None or not n else np.asarray(b)
            r[f"{part}_sampling_sd"] = math.sqrt(float(np.mean(b.var(0, ddof=1)))) if b is not None else math.nan
            r[f"{part}_own_sd"] = math.sqrt(own_sampling_var(b)) if b is not None and n >= 2 else math.nan
            r[f"{part}_dist_sd"] = stats.distribution_sd(r[f"{part}_seed_sd"], r[f"{part}_own_sd"]) \
                if np.isfinite(r[f"{part}_own_sd"]) else math.nan
        rows.append(r)
    return pd.DataFrame(rows)


def pair_table(grid_file: str | Path, pairs: Sequence[tuple[str, str]] = PILOT_PAIRS,
               n_boot: int = 1000, test: str = "run", write_cache: bool = True) -> pd.DataFrame:
    """One row per pair of pilot variants: seeds a side, the difference of their mean test AP, and
    how the test images move it (:func:`gflnb.study.decide.evaluation_parts`): in all, the part that
    is each model's own, and the ``shared`` rest, the part of a claim's standard error that more
    seeds do not shrink."""
    grid = load_grid(grid_file)
    pts = points(grid, test)
    pts = pts[pts["variant"].isin({v for pair in pairs for v in pair})]
    boot = bootstrap(pts, grid.out / BOOTSTRAP_FILE, n_boot, BOOT_SEED, write=write_cache)
    rows = []
    for a, b in pairs:
        ia, ib = list(pts.loc[pts["variant"] == a, "id"]), list(pts.loc[pts["variant"] == b, "id"])
        ok = bool(ia) and bool(ib)
        rows.append(dict(pair=f"{a} - {b}", seeds=f"{len(ia)} / {len(ib)}",
                         images=int(pts["test_images"].iloc[0]) if ok else 0,
                         diff=float(pts.loc[pts["variant"] == a, "test_AP"].mean()
                                    - pts.loc[pts["variant"] == b, "test_AP"].mean()) if ok else math.nan,
                         **(evaluation_parts(boot[ia].to_numpy(), boot[ib].to_numpy()) if ok else
                            dict(total=math.nan, model=math.nan, shared=math.nan))))
    return pd.DataFrame(rows)


def design(table: pd.DataFrame, claims: int, delta: float = DELTA, seeds: Sequence[int] = (5, 8, 10),
           floor: float = 0.0) -> dict:
    """Seeds a side for ``delta`` at 80% power from the largest seed sd of the pilot on the training
    runs' test set (``test_seed_sd``), alone
    (alpha 0.05) and with the strictest of Holm's steps over ``claims`` (alpha 0.05 / claims), and the
    difference that ``seeds`` resolve at each; ``seeds_holm_floor`` is the Holm figure once a claim's
    evaluation part ``floor`` (which seeds do not shrink) is added to its standard error."""
    sd = float(table["test_seed_sd"].max())
    alpha = 1 - stats.CONFIDENCE
    return dict(sd=sd, delta=delta, claims=claims, floor=floor,
                seeds_alone=stats.seeds_for_power(delta, sd, alpha),
                seeds_holm=stats.seeds_for_power(delta, sd, alpha / claims),
                seeds_holm_floor=stats.seeds_for_power(delta, sd, alpha / claims, floor=floor),
                detectable={n: dict(alone=stats.detectable_difference(sd, n, alpha),
                                    holm=stats.detectable_difference(sd, n, alpha / claims),
                                    holm_floor=stats.detectable_difference(sd, n, alpha / claims, floor=floor))
                            for n in seeds})


TEST_SIZES = (2000, 4000, 8000)  # final test sets the design chooses among
TRAIN_MINUTES = 16.0  # one point's training at 1 thread on an idle core (0.27 s an iteration, 3,000 of them)


def sizes(table: pd.DataFrame, claims: int, floor: float, eval_seconds_per_image: float, variants: int = 21,
          delta: float = DELTA, test_sizes: Sequence[int] = TEST_SIZES, cores: int = 2,
          max_seeds: int = 10) -> pd.DataFrame:
    """The design at each final test size M: a seed's sd on M images (the variant with the largest
    sd on the runs' own test set, its own sampling part scaled by ``sqrt(m / M)`` and its distribution
    part kept), the shared part ``floor`` scaled alike, the seeds a side that resolve ``delta`` with
    80% power at Holm's strictest step (None beyond ``max_seeds``), and the hours of ``cores``
    cores the sweep then takes (training, plus evaluating M images)."""
    alpha = (1 - stats.CONFIDENCE) / claims
    worst = table.loc[table["test_seed_sd"].idxmax()]
    m = int(worst["test_images"])
    dist2, own2 = worst["test_seed_sd"] ** 2 - worst["test_own_sd"] ** 2, worst["test_own_sd"] ** 2
    rows = []
    for size in test_sizes:
        sd = math.sqrt(max(dist2, 0.0) + own2 * m / size)
        fl = floor * math.sqrt(m / size)
        n = stats.seeds_for_power(delta, sd, alpha, floor=fl, max_seeds=max_seeds)
        n_run = max(n or max_seeds, 5)
        hours = variants * n_run * (TRAIN_MINUTES + size * eval_seconds_per_image / 60) / cores / 60
        rows.append(dict(test_images=size, seed_sd=sd, shared=fl, seeds=n, hours=hours,
                         resolves=stats.detectable_difference(sd, n_run, alpha, floor=fl)))
    return pd.DataFrame(rows)


def choose(size_table: pd.DataFrame, max_seeds: int = 10) -> dict:
    """The design the rule picks from :func:`sizes`: the fewest hours among the sizes that resolve
    the planned difference within ``max_seeds`` seeds; where none does, ``max_seeds`` seeds and the
    size at which they resolve the smallest difference (pilot.md). ``dict(test_images, seeds,
    hours, resolves, capped)``."""
    ok = size_table[size_table["seeds"].notna()]
    row = ok.loc[ok["hours"].idxmin()] if len(ok) else size_table.loc[size_table["resolves"].idxmin()]
    return dict(test_images=int(row["test_images"]), seeds=int(row["seeds"]) if len(ok) else max_seeds,
                hours=float(row["hours"]), resolves=float(row["resolves"]), capped=not len(ok))


def _md(frame: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(str(x) if isinstance(x, (str, int, np.integer)) else f"{x:.2f}"
                                       for x in r.values) + " |")
    return lines


def markdown(table: pd.DataFrame, d: dict, pairs: Optional[pd.DataFrame] = None,
             size_table: Optional[pd.DataFrame] = None) -> str:
    names = {"val": "validation images", "test": "test images of the training runs", "final": "final test images"}
    lines = []
    for part, name in names.items():
        if f"{part}_AP" not in table or not table[f"{part}_seeds"].any():
            continue
        size = f"{int(table[f'{part}_images'].max()):,}"
        cols = {"variant": "variant", f"{part}_seeds": "seeds", f"{part}_AP": "AP", f"{part}_seed_sd": "seed sd",
                f"{part}_sampling_sd": "one model's sampling sd", f"{part}_own_sd": "its own part",
                f"{part}_dist_sd": "distribution sd"}
        lines += [f"On the {size} {name}:", ""] + _md(table[list(cols)].rename(columns=cols)) + [""]
    if pairs is not None and len(pairs):
        size = f"{int(pairs['images'].max()):,}"
        lines += [f"Pairs, on the {size} test images of the training runs:", ""]
        lines += _md(pairs.drop(columns="images").rename(columns={
            "diff": "AP difference", "total": "evaluation sd", "model": "models' own part",
            "shared": "shared part"})) + [""]
    lines.append(f"Planning sd (the largest seed sd on the training runs' test images): {d['sd']:.2f} AP. Seeds a "
                 f"side to resolve {d['delta']:.1f} AP with 80% power: {d['seeds_alone']} at alpha 0.05, "
                 f"{d['seeds_holm']} at alpha 0.05/{d['claims']} (Holm's strictest step); {d['seeds_holm_floor']} "
                 f"there once the largest shared part of a pair ({d['floor']:.2f} AP), which seeds do not "
                 "shrink, is added.")
    for n, x in d["detectable"].items():
        lines.append(f"- {n} seeds a side resolve {x['alone']:.2f} AP alone, {x['holm']:.2f} AP under Holm's "
                     f"strictest step, {x['holm_floor']:.2f} AP there with the shared part (80% power)")
    if size_table is not None:
        shown = size_table.assign(seeds=[str(x) if x is not None and x == x else "more than 10"
                                         for x in size_table["seeds"]])
        lines += ["", "The final test set's size M, with N chosen at each:", ""]
        lines += _md(shown.rename(columns={"test_images": "M", "seed_sd": "seed sd on M", "shared": "shared part",
                                           "seeds": "N (80% power, Holm's strictest step)",
                                           "hours": "hours of 2 cores", "resolves": "difference N resolves"}))
    return "\n".join(lines)


EVAL_SECONDS_PER_IMAGE = 0.02  # until a final test has run: 2,000 images in 42 s of CPU at 1 thread (Zen 4)


def eval_seconds_per_image(grid) -> float:
    """The final tests' median CPU seconds per image (at 1 thread, what an idle core takes), or
    ``EVAL_SECONDS_PER_IMAGE`` before there are any."""
    recs = [finaltest.read(grid, p) for p in grid.points]
    t = [r["cpu_seconds"] / r["num_images"] for r in recs if r and "cpu_seconds" in r]
    return float(np.median(t)) if t else EVAL_SECONDS_PER_IMAGE


def main(argv: Optional[Sequence[str]] = None) -> None:
    from . import paper
    ap = argparse.ArgumentParser(prog="python -m gflnb.study.pilot", description=__doc__.splitlines()[0])
    ap.add_argument("grid")
    ap.add_argument("--variants", nargs="+", default=list(PILOT_VARIANTS))
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the images")
    a = ap.parse_args(argv)
    table = spread_table(a.grid, a.variants, a.boot)
    pairs = pair_table(a.grid, [pr for pr in PILOT_PAIRS if set(pr) <= set(a.variants)], a.boot)
    floor = float(pairs["shared"].max()) if len(pairs) and pairs["shared"].notna().any() else 0.0
    per_image = eval_seconds_per_image(load_grid(a.grid))
    print(markdown(table, design(table, len(paper.CLAIMS), floor=floor), pairs,
                   sizes(table, len(paper.CLAIMS), floor, per_image)))
    print(f"\n(evaluation: {per_image:.4f} CPU s an image at 1 thread, from the final tests so far; training "
          f"{TRAIN_MINUTES:.0f} min a point)")


if __name__ == "__main__":
    main()
