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
# # COCO evaluation
#
# Detections are mapped back to the original images, written as a COCO results file and scored by
# pycocotools' `COCOeval` (bbox): AP averaged over IoU thresholds 0.50:0.95, AP50, AP75 and AP by
# object size. By default this evaluates the checkpoint of chapter 3 on the synthetic validation
# set. To reproduce a seed-table row, pass a preset and its model-zoo checkpoint with COCO
# val2017, e.g. `config="gfl_r50_fpn_1x_coco"`,
# `checkpoint="gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth"`,
# `ann="coco/annotations/instances_val2017.json"`, `images="coco/val2017"`.
#
# The chapter ends with the paper's central claim about QFL: with a joint representation, the
# score a detector outputs is a good estimate of its box's IoU.

# %% tags=["parameters"]
# a gflnb checkpoint, or an mmdetection model-zoo file
checkpoint = "../runs/chapter3/latest.pth"
config = (
    ""  # a preset name; empty: the config stored in a gflnb checkpoint
)
ann = "../data/synth_v2/annotations/instances_val.json"
images = "../data/synth_v2/val"
# the seed-table row to show beside the result
seed_preset = "gfl_r50_fpn_1x_coco"
max_images = 0  # 0: all images
score_thr = 0.05  # test-time score threshold (the reference's 0.05)
batch_size = 8
device = "auto"
results_file = "../runs/chapter4/results.json"

# %% tags=["hide-input"]
from gflnb.chapters import nbtools as nb
from gflnb.chapters.analysis import SEED_RESULTS

nb.check(
    "checkpoint",
    checkpoint,
    str,
    lambda v: len(v) > 0,
    "must name a checkpoint file",
)
nb.check("config", config, str)
nb.check(
    "seed_preset",
    seed_preset,
    str,
    lambda v: v in SEED_RESULTS,
    f"must be one of {', '.join(SEED_RESULTS)}",
)
nb.check(
    "max_images",
    max_images,
    int,
    lambda v: v >= 0,
    "must be 0 (all) or a positive integer",
)
nb.check(
    "batch_size",
    batch_size,
    int,
    nb.positive,
    "must be a positive integer",
)
nb.check(
    "score_thr",
    score_thr,
    float,
    lambda v: 0 <= v < 1,
    "must be in [0, 1)",
)

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from gflnb.chapters import viz
from gflnb.chapters.analysis import correlation, load_model
from gflnb.data.coco import CocoDetection, ann_stats
from gflnb.engine.evaluate import (
    coco_eval,
    format_table,
    match_detections,
    predict_dataset,
)
from gflnb.engine.train import resolve_device

viz.setup()
dev = resolve_device(device)
over = dict(
    score_thr=score_thr,
    **({"num_classes": ann_stats(ann)["num_classes"]} if config else {}),
)
model = load_model(checkpoint, config or None, **over)
ds = CocoDetection(ann, images, model.cfg, train=False)
if max_images:
    ds.records = ds.records[:max_images]
print(
    f"{model.cfg.name}: {checkpoint}\n{len(ds)} images, {ds.num_classes} "
    f"classes from {ann}"
)

# %% [markdown]
# ## The AP table

# %%
results = predict_dataset(
    model.to(dev), ds, dev, batch_size, progress=False
)
Path(results_file).parent.mkdir(parents=True, exist_ok=True)
import json

Path(results_file).write_text(json.dumps(results))
res = coco_eval(ds, results)
print(format_table(res))

# %% [markdown]
# Beside it, the seed table (`SEED.md`): the published COCO val2017 box AP of the model-zoo weights.
# On the synthetic set the numbers are not comparable, only the layout is; evaluated with a zoo
# checkpoint on COCO, the two bars should agree.

# %%
seed = SEED_RESULTS[seed_preset]
table = pd.DataFrame(
    [
        {
            "run": f"this run ({model.cfg.name})",
            **{k: round(v, 1) for k, v in res.metrics.items()},
        },
        {"run": f"seed table: {seed_preset}", "AP": seed["box_ap"]},
    ]
).set_index("run")
display(table)
fig = viz.plot_ap_comparison(
    res.metrics,
    {"AP": seed["box_ap"]},
    f"{model.cfg.name} vs the seed's {seed_preset}",
)

# %% [markdown]
# ## Per-class AP and precision-recall curves

# %%
per_class = pd.Series(res.per_class).sort_values()
fig, ax = plt.subplots(figsize=(7, 0.35 * len(per_class) + 1.2))
per_class.plot.barh(ax=ax, color=viz.PALETTE[0])
ax.set(xlabel="AP (%)", title="AP per class")
if res.precision is not None:
    fig = viz.plot_pr_curves(res.precision, ds.class_names)

# %% [markdown]
# ## Does the score predict the IoU?
#
# For every detection, the IoU with its best-matching gt of the same class against its score (the
# paper's Fig. 2 argument). With QFL's joint representation the score was trained to *be* the
# IoU at the gt class, so the two should correlate, and the binned mean IoU should rise with the score.

# %%
m = match_detections(ds, results)
calib = correlation(m["score"], m["iou"])
fig = viz.plot_calibration(m["score"], m["iou"])
print(
    f"Pearson r(score, IoU) = {calib['pearson']:.3f}, Spearman = "
    f"{calib['spearman']:.3f} over {calib['n']} detections"
)

# %% [markdown]
# ## What we learned
#
# The AP table comes from pycocotools itself, so a number here is directly comparable to the seed
# table. On the calibration, from this run's data:

# %%
from IPython.display import Markdown

hi = m["score"] >= 0.3
c_hi = correlation(m["score"][hi], m["iou"][hi])
display(
    Markdown(
        f"* Over all {calib['n']} detections, Pearson r(score, IoU) = "
        f"{calib['pearson']:.2f} (Spearman "
        f"{calib['spearman']:.2f}: the many low-score detections on "
        "background, IoU 0, dominate the ranks).\n"
        f"* Among the {c_hi['n']} detections scoring at least 0.3, the "
        "ones "
        "NMS and AP care about, r = "
        f"{c_hi['pearson']:.2f}: the higher the joint score, the tighter "
        "the "
        "box, which is what lets NMS keep the "
        "right one of overlapping candidates."
    )
)

# %% tags=["remove-cell"]
nb.record(
    chapter="evaluation",
    checkpoint=checkpoint,
    images=len(ds),
    detections=len(results),
    **res.metrics,
    calibration_pearson=calib["pearson"],
    calibration_spearman=calib["spearman"],
)
