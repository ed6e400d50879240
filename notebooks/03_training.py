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
# # Training GFL
#
# This chapter trains a GFL detector end to end with the same engine that reproduces the seed table
# on COCO (`gflnb train`). By default it trains the small `gfl_cpu_demo` preset (a ResNet-18 at
# 1/4 width, three FPN levels, a two-conv head of 32 channels, fp32 in NHWC) from scratch on the
# built-in synthetic set for a fixed number of epochs. The budget is counted in iterations, not
# minutes, so every machine trains the same model and prints the same AP; only the wall time
# differs, and the chapter states the machine beside it. With parameters it trains any preset on any
# COCO-format data, e.g. `config="gfl_r50_fpn_1x_coco"` on COCO 2017 (with ImageNet weights, as
# the reference does).
#
# The objective is the sum of the three terms of chapters 1 and 2:
#
# $$
# \mathcal{L} = \frac{1}{N_{pos}} \sum_z \mathrm{QFL}
#   + \frac{1}{\sum_z w_z} \sum_{z \in pos} w_z \big( 2\,\mathcal{L}_{GIoU} + \tfrac{1}{4}\,\mathrm{DFL} \big),
# $$
#
# where each positive $z$ (assigned by ATSS) is weighted by $w_z$, its highest class score.

# %% tags=["parameters"]
config = "gfl_cpu_demo"  # a preset name (see gflnb.PRESETS)
# synthetic set location (generated when missing); empty:
# ../data/synth_v{data_version}
data_root = ""
num_train = (
    1000  # synthetic training images (used when train_ann is empty)
)
num_val = 200  # synthetic validation images
train_ann = ""  # COCO-format annotations; empty: the synthetic set
train_images = ""
val_ann = ""
val_images = ""
# 0: the preset's schedule (the budget, in epochs: the same result on every
# machine)
epochs = 0
# also evaluate on the validation set every N epochs (0: only at the end);
# kept in the record
eval_every = 0
# 0: none; else also stop (with a checkpoint) after this many minutes:
# machine-dependent
max_minutes = 0.0
overrides = {}  # any config field, e.g. {"lr": 0.004}
# checkpoints, log.jsonl and metrics.json land here
work_dir = "../runs/chapter3"
device = "auto"
seed = 0  # the training seed (initial weights, batch order, augmentation)
# the synthetic set's seed: fixed while sweeps vary the training seed
data_seed = 0
# the synthetic set's generator version (gflnb.data.synth.VERSIONS; 1: the
# ablation sweep's)
data_version = 2
# a held-out synthetic test set, evaluated once at the end (0: none)
num_test = 0
# the test set's generator seed: images the training and validation sets
# never show
test_seed = 7
# COCO-format test annotations (instead of the synthetic test set)
test_ann = ""
test_images = ""

# %% tags=["hide-input"]
from gflnb.chapters import nbtools as nb
from gflnb.config import PRESETS

nb.check(
    "config",
    config,
    str,
    lambda v: v in PRESETS,
    f"must be one of {', '.join(PRESETS)}",
)
nb.check(
    "max_minutes",
    max_minutes,
    float,
    lambda v: v >= 0,
    "must be 0 (no time budget) or a positive number of minutes",
)
nb.check(
    "epochs",
    epochs,
    int,
    lambda v: v >= 0,
    "must be 0 (the preset's) or a positive integer",
)
nb.check(
    "num_train", num_train, int, nb.positive, "must be a positive integer"
)
nb.check(
    "num_val", num_val, int, nb.positive, "must be a positive integer"
)
nb.check("overrides", overrides, dict)
nb.check(
    "device",
    device,
    str,
    lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"),
    "auto, cpu or cuda",
)
nb.check("seed", seed, int)
nb.check("data_seed", data_seed, int)
nb.check("data_version", data_version, int)
nb.check(
    "num_test",
    num_test,
    int,
    lambda v: v >= 0,
    "must be 0 (no test set) or a positive integer",
)
nb.check("test_seed", test_seed, int)

import json
import pprint
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from gflnb.chapters import viz
from gflnb.chapters.analysis import load_model, predict_images, read_log
from gflnb.config import get_config
from gflnb.data.coco import CocoDetection, ann_stats
from gflnb.numerics.machine import describe, machine_info
from gflnb.data.preprocess import load_image
from gflnb.data.synth import (
    dataset_paths,
    ensure_dataset,
    ensure_test_set,
    synth_root,
)
from gflnb.engine.train import TrainOptions, train

viz.setup()
if not train_ann:
    data_root = synth_root(data_version, data_root)
    ensure_dataset(
        data_root,
        num_train,
        num_val,
        seed=data_seed,
        progress=False,
        version=data_version,
    )
    train_ann, train_images = (
        str(p) for p in dataset_paths(data_root, "train")
    )
    val_ann, val_images = (str(p) for p in dataset_paths(data_root, "val"))
if num_test and not test_ann:
    test_ann, test_images = (
        str(p) for p in ensure_test_set(data_version, num_test, test_seed)
    )
stats = ann_stats(train_ann)
print(
    f"training data: {stats['num_images']} images, "
    f"{stats['num_annotations']} boxes, {stats['num_classes']} classes"
)
print(f"from {train_ann}")

# %% [markdown]
# ## The configuration
#
# One typed object holds every hyperparameter; presets are small overrides of mmdetection's
# `gfl_r50_fpn_1x_coco`. The number of classes comes from the annotation file.

# %%
cfg = get_config(
    config,
    **{"num_classes": stats["num_classes"], "seed": seed, **overrides},
)
if epochs:
    cfg = get_config(cfg, epochs=epochs)
show = [
    "depth",
    "base_channels",
    "out_channels",
    "num_outs",
    "strides",
    "octave_base_scale",
    "feat_channels",
    "stacked_convs",
    "reg_max",
    "channels_last",
    "cpu_amp",
    "img_scale",
    "optimizer",
    "lr",
    "batch_size",
    "epochs",
    "milestones",
    "warmup_iters",
]
# one field a line, so that the output fits the page
pprint.pprint(
    {k: getattr(cfg, k) for k in show}, width=78, sort_dicts=False
)

# %% [markdown]
# ## Some training images
#
# Dashed boxes are the annotations. Edges are sharp, blurred by a known radius, or occluded; the
# annotation file records which (chapter 5 uses this). In the set's version 2 the blur radius and the
# occluders grow with the object, so that an unclear edge is unclear at its own level's scale.

# %%
ds = CocoDetection(train_ann, train_images, cfg, train=False)
fig, axes = plt.subplots(1, 4, figsize=(16, 4))
for ax, rec in zip(axes, ds.records[:4]):
    empty = dict(
        boxes=torch.zeros(0, 4),
        scores=torch.zeros(0),
        labels=torch.zeros(0, dtype=torch.long),
    )
    viz.draw_detections(
        ax,
        load_image(rec.path),
        empty,
        ds.class_names,
        gts=rec.boxes,
        title=f"image {rec.img_id}: {len(rec.boxes)} objects",
    )

# %% [markdown]
# ## Train
#
# The run writes `log.jsonl` (every loss term, the learning rate, data and step time, images/s per
# iteration), a checkpoint at every epoch end (atomically, so a crash never leaves a torn file), and
# `metrics.json` with the validation AP.

# %%
opts = TrainOptions(
    train_ann,
    train_images,
    work_dir,
    val_ann or None,
    val_images or None,
    max_minutes=max_minutes or None,
    device=device,
    progress=False,
    eval_every=eval_every,
    test_ann=test_ann or None,
    test_images=test_images or None,
)
metrics = train(cfg, opts)
machine = machine_info()
print(
    json.dumps(
        {
            k: v
            for k, v in metrics.items()
            if k not in ("per_class", "test")
        },
        indent=1,
    )
)
print(
    f"{metrics['iterations']} iterations in "
    f"{metrics['train_minutes']:.2f} "
    f"min\non {describe(machine)}"
)

# %% [markdown]
# ## Loss curves, learning rate and throughput

# %%
log = read_log(work_dir)
fig = viz.plot_training(log)

# %% [markdown]
# ## Sample detections on validation images
#
# Colored boxes are detections with score above 0.3, dashed white boxes the annotations.

# %%
checkpoint = str(Path(work_dir) / "latest.pth")
model = load_model(checkpoint)
if val_ann:
    vds = CocoDetection(val_ann, val_images, cfg, train=False)
    preds = predict_images(
        model, vds, list(range(min(6, len(vds)))), with_dist=False
    )
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    for ax, p, rec in zip(axes.flat, preds, vds.records):
        viz.draw_detections(
            ax,
            load_image(rec.path),
            p,
            vds.class_names,
            gts=rec.boxes,
            title=f"image {rec.img_id}",
        )

# %% [markdown]
# ## What we learned
#
# The three loss terms fall together: QFL teaches the joint class-IoU score, GIoU places the box
# through the Integral, DFL sharpens the distributions. The checkpoint written here is the input of
# chapters 4 (COCO evaluation) and 5 (learned distributions).

# %% tags=["remove-cell"]
ap = metrics.get("metrics", {})
nb.record(
    chapter="training",
    config=cfg.name,
    max_minutes=max_minutes,
    iterations=metrics["iterations"],
    train_minutes=metrics["train_minutes"],
    checkpoint=checkpoint,
    AP=ap.get("AP"),
    AP50=ap.get("AP50"),
    imgs_per_s=float(log["imgs_per_s"].median()),
    machine=describe(machine),
    test_AP=metrics.get("test", {}).get("metrics", {}).get("AP"),
    eval_history=[
        dict(epoch=e["epoch"], AP=e.get("AP"))
        for e in metrics.get("eval_history", [])
    ],
)
