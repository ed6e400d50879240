# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The paper's ablations, reproduced
#
# The paper argues for GFL with ablations: how localisation quality is represented (Table 1a),
# QFL's exponent $\beta$ (Table 1c), how the box is represented (Table 2a), the number and width of
# the bins (Tables 2b and 2c), QFL with and without DFL (Table 3), and GFLv2's
# Distribution-Guided Quality Predictor (DGQP). This chapter reads a sweep that follows that
# design row for row, with the same factor held fixed as in each of the paper's tables
# (`gflnb/study/paper.py` cites them): 21 variants, each trained with three seeds by chapter 3's
# notebook on the book's synthetic set, for the preset's full 12 epochs, with validation AP every
# 2 epochs (`experiments/ablations/v2_12epochs/`, one papermill run per variant and seed). It
# trains nothing itself. The plateau sweep that replaces it (24 epochs, 2,000 held-out images,
# seeds sized by a pilot: `experiments/ablations/pilot.md`) is running; this chapter moves to it when
# it is complete.
#
# A difference of a few tenths of AP, as in most of the paper's rows, is within what another seed
# changes on a small set. So each claim gets a 95% confidence interval over seeds, and a verdict
# only where that interval excludes zero; "not resolved" is a result too. The chapter then asks
# whether a verdict is there through training or only at its end (the learning curves), and
# measures the paper's Fig. 2 argument: with a separate quality branch, a background anchor can
# pair a low class score with a high quality score and outrank true positives in NMS; a joint
# score cannot.

# %% tags=["parameters"]
# written by gflnb sweep
results_csv = "../experiments/ablations/v2_12epochs/results.csv"
# variant names, labels and the shared run parameters
grid = "../experiments/ablations/v2_12epochs/grid.yaml"
# one JSON record per run (Fig. 2 summaries)
records_dir = "../experiments/ablations/v2_12epochs/records"
# the plateau sweep, whose pilot sizes its design
plateau_grid = "../experiments/ablations/grid.yaml"

# %% tags=["hide-input"]
from gflnb.chapters import nbtools as nb

nb.check(
    "results_csv",
    results_csv,
    str,
    lambda v: len(v) > 0,
    "must name the sweep's results.csv",
)
nb.check("grid", grid, str)
nb.check("records_dir", records_dir, str)
nb.check("plateau_grid", plateau_grid, str)

import numpy as np
import pandas as pd
from IPython.display import Markdown

from gflnb.study import ablation, paper
from gflnb.study.stats import fmt_interval
from gflnb.chapters import viz

viz.setup()
try:
    df = ablation.read_results(results_csv)
except FileNotFoundError as e:
    print(f"NOTE: {e}.\nThe chapter shows the paper's tables only.")
    df = pd.DataFrame(
        columns=[
            "variant",
            "seed",
            *ablation.AP_KEYS,
            "status",
            "error",
            "iterations",
        ]
    )
g = ablation.read_grid(grid)
if not g:
    print(
        f"NOTE: no grid file at {grid}: variant labels come from the "
        "paper's "
        "row names."
    )
records = ablation.read_records(records_dir)
order = ablation.variant_order(df, g)
labels = ablation.variant_labels(
    g,
    order
    + [
        v
        for t in paper.TABLES.values()
        for v in t["rows"]
        if v not in order
    ],
)
ok = ablation.ok_rows(df)
stats = ablation.variant_stats(df, order)
info = ablation.run_info(df, g)
print(
    f"{info['runs']} runs in {results_csv}: {info['ok']} ok, "
    f"{info['failed']} "
    f"failed, {info['missing']} not run yet; "
    f"{info['variants']} variants, seeds {info['seeds']}, iterations per "
    "run "
    f"{info['iterations'] or '–'}; "
    f"{len(records)} records"
)

# %% [markdown]
# ## The runs
#
# One row per variant: successful seeds, failed ones, and AP, AP50 and AP75 as mean ± std over the
# successful seeds (a single seed has no spread and shows only `n=1`). Failed runs are listed with
# their error; they count nowhere else.

# %% tags=["hide-input"]
if len(stats) and len(df):
    runs = pd.DataFrame(
        {
            "variant": stats.index,
            "label": [labels[v] for v in stats.index],
            "ok seeds": stats["n"].to_numpy(),
            "failed": stats["failed"].to_numpy(),
            "not run yet": stats["missing"].to_numpy(),
            **{
                m: [
                    ablation.fmt(
                        s[f"{m}_mean"], s[f"{m}_std"], int(s["n"])
                    )
                    for _, s in stats.iterrows()
                ]
                for m in ("AP", "AP50", "AP75")
            },
        }
    ).set_index("variant")
    display(runs)
    bad = df[
        df["status"] == "failed"
    ]  # rows not run yet are counted above, not listed as failures
    if len(bad):
        display(
            bad[["variant", "seed", "status", "error"]].set_index(
                ["variant", "seed"]
            )
        )
else:
    print("No runs to show.")

# %% [markdown]
# ## The paper's tables beside the synthetic set
#
# The paper's columns are its ATSS numbers (COCO minival, R-50-FPN, 1x); the synthetic columns are
# mean ± std over seeds of the CPU demo detector. Absolute APs cannot be compared (another data
# set, model and schedule); the order of the rows can.

# %% tags=["hide-input"]
for tid, t in paper.TABLES.items():
    display(
        Markdown(
            f"**{t['title']}**" + (f" {t['note']}" if t["note"] else "")
        )
    )
    display(ablation.side_by_side(tid, stats))

# %% [markdown]
# ## AP per variant
#
# Each dot is one seed; the diamond is the mean and the bar its standard deviation over seeds. GFL
# (joint QFL score, DFL) is drawn in orange.

# %% tags=["hide-input"]
if len(ok):
    fig = viz.plot_ablation_ap(ok, order, labels)
else:
    print("No successful run: nothing to plot.")

# %% [markdown]
# ## Background anchors outranking positives (Fig. 2)
#
# For the variants whose records carry it, the sweep scored every anchor of the first validation
# images (all levels, before the score threshold) with the score `GFLHead.predict` ranks by in NMS,
# and took the IoU of each anchor's decoded box with its best gt. Anchors with IoU $< 0.3$ are
# background, those with IoU $\geq 0.5$ positive-like. The top row shows where the anchors lie in
# (IoU, score) and the median score of the positive-like anchors; the number above each panel is
# the fraction of background anchors scoring above that median, which NMS and AP would rank ahead
# of a typical true positive. The bottom row, for models whose score is a class score times a
# quality factor, shows the background anchors' class score against their quality; the green box
# is the paper's failure case (class score below 0.1, quality above 0.5). Histograms are summed,
# fractions averaged over seeds. The table after the figure compares each separate branch's
# fraction with the joint score's over seeds, with the same Welch interval as the claims below.

# %% tags=["hide-input"]
pooled = ablation.pool_background(records)
bg = ablation.background_table(records)
if pooled:
    fig = viz.plot_background(pooled, labels)
    summary = bg.groupby("variant")[
        [
            "background",
            "positive",
            "bg_outrank_frac",
            "ranking_auc",
            "bg_quality_q99",
            "bg_lowcls_highq_frac",
        ]
    ].mean()
    # anchors per run, averaged over seeds: whole anchors on the page
    counts = ["background", "positive"]
    summary[counts] = summary[counts].round().astype(int)
    summary.insert(0, "seeds", bg.groupby("variant").size())
    display(
        summary.rename(
            columns={
                "bg_outrank_frac": "bg > pos. median",
                "ranking_auc": "P(pos > bg)",
                "bg_quality_q99": "bg quality q99",
                "bg_lowcls_highq_frac": "bg cls<.1, q>.5",
            }
        ).round(3)
    )
    print(
        "P(pos > bg): the probability that a random positive-like anchor "
        "outscores a random background one."
    )
    joint = next(
        (v for v in ablation.FIG2_JOINT if v in pooled),
        ablation.FIG2_JOINT[0],
    )
    fig2 = ablation.fig2_compare(bg, joint)
    if len(fig2):
        display(
            fig2.assign(
                **{
                    "Δ (points)": fig2["diff"].round(3),
                    "95% interval": [
                        fmt_interval(a, b, 3, signed=True)
                        if np.isfinite(a)
                        else "–"
                        for a, b in zip(fig2["lo"], fig2["hi"])
                    ],
                    "seeds": [
                        f"{a}/{b}"
                        for a, b in zip(fig2["n_better"], fig2["n_worse"])
                    ],
                }
            )[
                [
                    "variant",
                    "separate_pct",
                    "joint_pct",
                    "Δ (points)",
                    "95% interval",
                    "seeds",
                    "verdict",
                ]
            ]
            .rename(
                columns={
                    "separate_pct": "separate %",
                    "joint_pct": f"{joint} %",
                }
            )
            .set_index("variant")
        )
else:
    print(
        f"No record in {records_dir} has a background summary (the sweep "
        "writes one for gfl, iou, "
        "centerness and dgqp)."
    )

# %% [markdown]
# ## Learning curves
#
# Validation AP against epoch, one panel per table: the line is the mean over seeds, the band the
# seeds' range. The learning rate drops at epoch 11 (the preset's milestone), and the longer
# schedules' at 16 and 22. A row that leads early and is caught later says how fast a variant
# starts, not what it is worth at the end; the claims below are read at the last epoch, and the
# conclusions say for each reversed claim since when it is reversed.

# %% tags=["hide-input"]
curves = ablation.learning_curves(records, df)
if len(curves):
    fig = viz.plot_learning_curves(
        ablation.curve_stats(curves), ablation.curve_panels(g), labels
    )
else:
    print(
        "No record has validation APs per epoch (the grid's eval_every): "
        "no "
        "curves to draw."
    )

# %% [markdown]
# ### How far 12 epochs are from a plateau
#
# GFL and $\beta = 1$ also ran for twice the schedule (24 epochs, the learning rate dropped at
# epochs 16 and 22, as mmdetection's 2x). The table compares their final AP with the 12-epoch
# runs', with the same Welch interval as the claims below (seeds: longer/base), and gives what the
# longer runs still gained over their last evaluation interval, mean over seeds: near 0 at a plateau.

# %% tags=["hide-input"]
schedule = ablation.schedule_gains(df, g, curves)
if len(schedule) and np.isfinite(schedule["diff"]).any():
    # few, short columns: the table fits the page without scrolling
    # sideways
    display(
        pd.DataFrame(
            {
                "longer schedule": [
                    labels.get(v, v) for v in schedule["variant"]
                ],
                "AP": [
                    f"{a:.2f} at {e}" if np.isfinite(a) else "–"
                    for a, e in zip(schedule["AP"], schedule["epochs"])
                ],
                "base AP": [
                    f"{a:.2f} at {e}" if np.isfinite(a) else "–"
                    for a, e in zip(
                        schedule["base_AP"], schedule["base_epochs"]
                    )
                ],
                "Δ AP": [
                    f"{d:+.2f}" if np.isfinite(d) else "–"
                    for d in schedule["diff"]
                ],
                "95% interval": [
                    fmt_interval(a, b, signed=True)
                    if np.isfinite(a)
                    else "–"
                    for a, b in zip(schedule["lo"], schedule["hi"])
                ],
                "reading": schedule["reading"]
                .map(ablation.SCHEDULE_READINGS)
                .to_numpy(),
                "seeds": [
                    f"{a}/{b}"
                    for a, b in zip(
                        schedule["n_better"], schedule["n_worse"]
                    )
                ],
                "last interval": [
                    f"{x:+.2f} ({int(e)}→{n})" if np.isfinite(x) else "–"
                    for x, e, n in zip(
                        schedule["last_gain"],
                        schedule["last_from"],
                        schedule["epochs"],
                    )
                ],
            }
        ).set_index("longer schedule")
    )
else:
    print(
        "The longer schedules have not run yet (or their 12-epoch bases "
        "have "
        "not)."
    )

# %% [markdown]
# ### The next sweep's design: the pilot
#
# Before the plateau sweep's design is fixed, its pilot
# (`experiments/ablations/pilot.md`) measures where the spread between
# seeds comes from, on the points it has so far. For each variant and test
# set: the sd between seeds; the part of it that is each model's own
# sampling error on those images, the images on which the runs disagree
# (Jordan, ICLR 2024); and what is left, the spread between the models
# themselves. A claim's interval also carries a part that no number of seeds
# shrinks: how differently the images treat two variants. The last table
# weighs the final test set's size by the hours that resolve 1 AP, and the
# rule (`pilot.md`) picks the design from it.

# %% tags=["hide-input"]
from pathlib import Path

from gflnb.study import pilot
from gflnb.study.sweep import load_grid

spread = pd.DataFrame()
if Path(plateau_grid).exists():
    spread = pilot.spread_table(plateau_grid, val=False, write_cache=False)
if len(spread) and spread["test_seeds"].any():
    names = [labels.get(v, v) for v in spread["variant"]]
    for part in ("test", "final"):
        sp = spread.filter(like=f"{part}_").rename(
            columns=lambda c: c.removeprefix(f"{part}_")
        )
        if not len(sp.columns) or not sp["seeds"].any():
            continue
        print(f"On {int(sp['images'].max()):,} test images:")
        two = lambda col: [f"{x:.2f}" if x == x else "–" for x in col]
        display(
            pd.DataFrame(
                {
                    "variant": names,
                    "seeds": sp["seeds"].to_numpy(),
                    "AP": two(sp["AP"]),  # "–": not run yet, or one seed
                    "seed sd": two(sp["seed_sd"]),
                    "own part": two(sp["own_sd"]),
                    "models' sd": two(sp["dist_sd"]),
                }
            ).set_index("variant")
        )
    run = set(spread["variant"])
    pairs = pilot.pair_table(
        plateau_grid,
        [pr for pr in pilot.PILOT_PAIRS if set(pr) <= run],
        write_cache=False,
    )
    floor = float(pairs["shared"].max()) if len(pairs) else 0.0
    per_image = pilot.eval_seconds_per_image(load_grid(plateau_grid))
    sizes = pilot.sizes(spread, len(paper.CLAIMS), floor, per_image)
    print("The design at each size of the final test set:")
    display(
        pd.DataFrame(
            {
                "test images": [f"{m:,}" for m in sizes["test_images"]],
                "seed sd": sizes["seed_sd"].round(2).to_numpy(),
                "shared part": sizes["shared"].round(2).to_numpy(),
                "seeds a side": [
                    "over 10" if pd.isna(n) else int(n)
                    for n in sizes["seeds"]
                ],
                "hours": sizes["hours"].round(1).to_numpy(),
            }
        ).set_index("test images")
    )
    d = pilot.choose(sizes)
    why = (
        "1 AP needs more than 10 seeds a side at every size, so the rule "
        "runs 10, on the size where they resolve the smallest difference"
        if d["capped"]
        else "the fewest hours that resolve 1 AP"
    )
    display(
        Markdown(
            f"The rule's design: {d['test_images']:,} test images and "
            f"{d['seeds']} seeds a side ({why}; {d['hours']:.1f} hours of "
            f"two cores). It resolves {d['resolves']:.2f} AP with 80% "
            "power under Holm's strictest step. The shared part is "
            f"{floor:.2f} AP on the runs' own test images."
        )
    )
else:
    print("The plateau sweep's pilot has no points yet.")

# %% [markdown]
# ## The paper's claims
#
# Each claim compares two rows of one of the paper's tables. The difference is better minus worse
# in AP, so a positive number is the paper's direction. With $n_a, n_b$ seeds and sample variances
# $s_a^2, s_b^2$, the interval is Welch's,
#
# $$\Delta \pm t_{\nu}(0.975)\,\sqrt{s_a^2/n_a + s_b^2/n_b},$$
#
# $$\nu = \frac{(s_a^2/n_a + s_b^2/n_b)^2}{(s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)},$$
#
# and a claim holds (or is reversed) when its 95% interval excludes 0 on the paper's side (or the
# other). Holm's column applies the same test with the family-wise error over all claims kept at 5%.
# The figure shows the difference here with its interval and the paper's difference (a cross).

# %% tags=["hide-input"]
claims = ablation.claim_table(df)
counts = ablation.verdict_counts(claims)
show = claims.assign(
    **{
        "paper Δ AP": claims["paper_diff"],
        "here Δ AP": [
            f"{d:+.2f}" if np.isfinite(d) else "–" for d in claims["diff"]
        ],
        "95% interval": [
            fmt_interval(a, b, signed=True) if np.isfinite(a) else "–"
            for a, b in zip(claims["lo"], claims["hi"])
        ],
        "n (better/worse)": [
            f"{a}/{b}"
            for a, b in zip(claims["n_better"], claims["n_worse"])
        ],
        "Holm": claims["holm_verdict"],
    }
)
# the verdicts next to the numbers they follow from, so the page shows them
# without scrolling sideways
display(
    show[
        [
            "claim",
            "table",
            "paper Δ AP",
            "here Δ AP",
            "95% interval",
            "verdict",
            "Holm",
            "n (better/worse)",
        ]
    ].set_index("claim")
)
fig = viz.plot_claims(claims, ablation.CONFIDENCE)
print(
    f"holds {counts['holds']}, reversed {counts['reversed']}, not "
    "resolved "
    f"{counts['not_resolved']} "
    f"of {len(claims)} claims"
)

# %% [markdown]
# ## What we learned
#
# Stated from this sweep's numbers:

# %% tags=["hide-input"]
by_epoch = ablation.claims_by_epoch(curves)
display(
    Markdown(
        "\n".join(
            ablation.learned(
                claims,
                info,
                pooled,
                labels,
                ok,
                records,
                by_epoch,
                schedule,
            )
        )
    )
)

# %% tags=["remove-cell"]
nb.record(
    chapter="ablations",
    runs=info["runs"],
    ok_runs=info["ok"],
    failed_runs=info["failed"],
    missing_runs=info["missing"],
    variants=info["variants"],
    seeds=len(info["seeds"]),
    iterations=info["iterations"],
    claims=len(claims),
    holds=counts["holds"],
    reversed=counts["reversed"],
    not_resolved=counts["not_resolved"],
    background_variants=sorted(pooled),
    pilot_points=int(spread["test_seeds"].sum()) if len(spread) else 0,
)
