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
# # Learned box distributions
#
# GFL's second claim: the general distribution a trained model outputs for each side is **sharp
# where the edge is clear and flat where it is ambiguous** (the paper's Fig. 3 and appendix F, on
# COCO images with occluded or blurred objects), and some are **bimodal**, with two plausible edges.
# On COCO one can only look. The synthetic set records, for every edge, how ambiguous it is by
# construction (a known blur radius, or the occluded fraction of the edge), so here it can be
# *measured*.
#
# For each gt matched by a detection we take the four per-side distributions of that detection
# (the highest-scoring one of its class with IoU of at least `iou_match`) and their spread: the
# entropy $H = -\sum_i P(y_i)\log P(y_i)$ and the standard deviation, in bins (one bin is one stride
# of the detection's FPN level) and in pixels. Every interval below is a 95% bootstrap interval
# that resamples whole **objects**, since the four sides of one object are not independent.

# %% tags=["parameters"]
checkpoint = "../runs/chapter3/latest.pth"
# a preset name for mmdetection checkpoints; empty: the one stored in the
# checkpoint
config = ""
ann = "../data/synth_v2/annotations/instances_val.json"
images = "../data/synth_v2/val"
max_images = 200  # images to analyse
# objects in the gallery: a third clear, a third blurred, a third occluded
gallery_size = 6
score_thr = 0.05  # test-time score threshold
# a gt is matched by its best detection of the same class with at least
# this IoU
iou_match = 0.5
n_boot = 2000  # bootstrap replicates of every interval
explore_image = 0  # the image the explorer starts on
device = "cpu"

# %% tags=["hide-input"]
from gflnb.chapters import nbtools as nb

nb.check(
    "checkpoint",
    checkpoint,
    str,
    lambda v: len(v) > 0,
    "must name a checkpoint file",
)
nb.check(
    "max_images",
    max_images,
    int,
    nb.positive,
    "must be a positive integer",
)
nb.check(
    "gallery_size",
    gallery_size,
    int,
    lambda v: 1 <= v <= 24,
    "must be between 1 and 24",
)
nb.check(
    "score_thr",
    score_thr,
    float,
    lambda v: 0 <= v < 1,
    "must be in [0, 1)",
)
nb.check(
    "iou_match",
    iou_match,
    float,
    lambda v: 0 < v <= 1,
    "must be in (0, 1]",
)
nb.check("n_boot", n_boot, int, lambda v: v >= 100, "must be at least 100")
nb.check(
    "explore_image",
    explore_image,
    int,
    lambda v: v >= 0,
    "must be a non-negative image index",
)

import numpy as np
import pandas as pd
from IPython.display import Markdown

from gflnb import explore
from gflnb.chapters import spread, viz
from gflnb.chapters.analysis import edge_table, load_model, object_view
from gflnb.data.coco import CocoDetection, ann_stats
from gflnb.study.stats import fmt_interval

viz.setup()
over = dict(
    score_thr=score_thr,
    **({"num_classes": ann_stats(ann)["num_classes"]} if config else {}),
)
model = load_model(
    checkpoint, config or None, **over
).eval()  # its inference path is built once, for every figure below
ds = CocoDetection(ann, images, model.cfg, train=False)
edges = edge_table(
    model, ds, max_images=max_images, device=device, iou_match=iou_match
)
if edges.empty:
    raise RuntimeError(
        f"no gt was matched by a detection (IoU >= {iou_match}); is the "
        "checkpoint trained?"
    )
has_truth = "kind" in edges
print(
    f"{edges['ann_id'].nunique()} matched objects, {len(edges)} edges "
    "from "
    f"{min(max_images, len(ds))} images"
)

# %% [markdown]
# ## Ambiguity at the scale of the bins
#
# A distribution has one bin per stride, so an edge is only ambiguous *to the model* when its
# uncertainty spans bins. In the set's version 2 the blur radius and the occluders grow with the
# object, and the object's size decides its FPN level, so a blurred edge is blurred by a similar
# number of bins on every level. The table: how many edges of each kind the matched objects have,
# and the blur sigma in bins of the level that detected them.

# %%
if has_truth:
    blurred = edges[edges["blur"] > 0]
    counts = edges.groupby("kind", sort=False).agg(
        edges=("side", "size"), objects=("ann_id", "nunique")
    )
    display(
        counts.reindex([k for k in spread.EDGE_KINDS if k in counts.index])
    )
    q = blurred["blur_bins"].quantile([0.1, 0.5, 0.9])
    print(
        f"blur sigma on blurred edges, in bins: 10% {q[0.1]:.2f}, median "
        f"{q[0.5]:.2f}, 90% {q[0.9]:.2f}\n"
        f"(+-2 sigma spans {4 * q[0.5]:.1f} bins at the median)"
    )

# %% [markdown]
# ## Distributions drawn on the image
#
# Each panel is one object: a crop around it, with the distributions of its left and right sides
# (over $x$) above the crop and those of its top and bottom sides (over $y$) to its right, each on
# the crop's own axis. Solid lines are the predicted edges (each at its distribution's mean, the
# Integral), dashed lines the gt edges; the key gives each side's recorded ambiguity. The panels are
# the clear objects the model is surest of, and the most blurred and the most occluded ones.

# %%
picks = spread.pick_objects(
    edges, gallery_size
)  # without recorded ambiguity (COCO): the sharpest and flattest
items = [
    v
    for v in (
        object_view(
            model, ds, a, iou_match, device, title=f"object {a}: {kind}"
        )
        for a, kind in picks
    )
    if v is not None
]
if items:
    fig = viz.plot_distribution_gallery(items)
else:
    print("no object to show: no detection matched a gt")

# %% [markdown]
# ## Spread by edge kind
#
# Mean entropy, standard deviation (in bins) and share of bimodal distributions per edge kind, with
# 95% intervals; the rule for "bimodal" is printed with the table.

# %%
print(
    f"bimodal: a second peak of at least {spread.BIMODAL_MIN_PEAK:.0%} of "
    "the "
    "highest,\n"
    f"with a valley below {spread.BIMODAL_MAX_DIP:.0%} of the lower peak "
    "between them"
)
if has_truth:
    kinds = spread.by_kind(edges, n_boot=n_boot)
    display(spread.interval_table(kinds))
    fig = viz.plot_spread_by_kind(kinds)
else:
    kinds = None

# %% [markdown]
# ## Spread against the truth
#
# Left: entropy against the edge's recorded ambiguity (0 is a clear edge). Middle: for blurred
# edges, the distribution's standard deviation against the blur sigma, both in bins. Right: the
# actual error of the side against its distribution's entropy. If DFL learned what the paper says,
# every panel rises.

# %%
fig = viz.plot_spread_vs_truth(edges, n_boot=n_boot)
pairs = [("entropy", "abs_err_px"), ("std_px", "abs_err_px")]
if has_truth:
    pairs = [("ambiguity", "entropy"), ("ambiguity", "std_bins")] + pairs
corr = spread.correlations(edges, pairs, n_boot=n_boot)
display(
    pd.DataFrame(
        {
            "r": corr["r"].round(3).to_numpy(),
            "edges": corr["edges"].to_numpy(),
            "95% interval": [
                fmt_interval(a, b, 3)
                for a, b in zip(corr["lo"], corr["hi"])
            ],
        },
        index=[f"r({x}, {y})" for x, y in zip(corr["x"], corr["y"])],
    )
)

# %% [markdown]
# ## Bimodal distributions
#
# The distributions the rule above calls bimodal, highest second peak first; sides recorded as
# ambiguous are red.

# %%
shown = (
    edges[edges["bimodal"]]
    .drop_duplicates("ann_id")
    .sort_values("entropy", ascending=False)
    .head(4)
)
views = [
    v
    for v in (
        object_view(model, ds, int(a), iou_match, device)
        for a in shown["ann_id"]
    )
    if v is not None
]
if views:
    fig = viz.plot_side_profiles(
        np.stack([v["dist"] for v in views]),
        [v["title"] for v in views],
        (
            np.array(
                [v["ambiguity"] or [np.nan] * 4 for v in views], float
            )
            if has_truth
            else None
        ),
    )
print(
    f"{int(edges['bimodal'].sum())} of {len(edges)} edges "
    f"({100 * edges['bimodal'].mean():.1f}%) are bimodal"
)

# %% [markdown]
# ## Explore
#
# In JupyterLab the next cell opens an explorer: step through the images, pick a detection by
# clicking it or from the list, move the score threshold, and switch between choosing among the
# predictions and among the gt boxes (each shown through its best-matching detection). It works
# on any checkpoint and COCO-format dataset: `gflnb.explore(load_model(path), CocoDetection(ann,
# images, cfg, train=False))`. The book cannot run widgets, so below it is the explorer's view of
# the first image with a detection, drawn statically.

# %% tags=["remove-output"]
explorer = explore(
    model, ds, device=device, images=range(min(max_images, len(ds)))
)
explorer.seek(
    min(explore_image, len(explorer.images) - 1)
)  # from there, the first image with a detection
explorer

# %% tags=["remove-input"]
fig = explorer.render()

# %% [markdown]
# ## What we learned
#
# Each claim is tested by its 95% interval: it *holds* when the interval lies above zero, is
# *reversed* below zero, and is *not resolved* when the interval covers zero. The sentences are
# written from this run's numbers, and they are about one trained model: the bootstrap resamples
# objects, not training runs (the last bullet names the verdicts nearest to flipping).

# %%
found = spread.findings(edges, n_boot=n_boot)
display(Markdown("\n".join(spread.describe_findings(found, kinds))))

# %% tags=["remove-cell"]
rec = dict(
    chapter="distributions",
    edges=len(edges),
    objects=int(edges["ann_id"].nunique()),
    bimodal_share=float(edges["bimodal"].mean()),
)
rec.update({f"r_{r.x}_{r.y}": r.r for r in corr.itertuples()})
rec.update(
    {f"verdict_{i}": f.verdict for i, f in enumerate(found.itertuples())}
)
if kinds is not None:
    rec.update({f"entropy_{k}": r.entropy for k, r in kinds.iterrows()})
nb.record(**rec)
