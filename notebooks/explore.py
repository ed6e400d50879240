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
# # Explore a model's box distributions
#
# An interactive view of any GFL checkpoint on any COCO-format dataset (chapter 5 explains what
# the distributions mean). Set the parameters, run all cells, then:
#
# * **previous / next** or the **image** slider step through the images;
# * **click** a box on the image, or pick one from the list, to see its four distributions;
# * **score >=** hides detections below a score;
# * **choose among** switches between the predicted boxes and the gt boxes (each gt is shown
#   through its best-matching detection, so its dashed edges can be compared with the solid ones).
#
# For COCO: `checkpoint` a model-zoo file, `config` its preset (e.g. `gfl_r50_fpn_1x_coco`), and
# `ann` / `images` the val2017 annotation file and image folder.

# %% tags=["parameters"]
# `make book` (chapter 3) writes this one
checkpoint = "../runs/chapter3/latest.pth"
# a preset name for mmdetection checkpoints; empty: the one stored in the
# checkpoint
config = ""
ann = "../data/synth_v2/annotations/instances_val.json"
images = "../data/synth_v2/val"
score_thr = 0.3  # the slider's starting value
device = "cpu"

# %%
from gflnb.chapters import nbtools as nb

nb.check(
    "checkpoint",
    checkpoint,
    str,
    lambda v: len(v) > 0,
    "must name a checkpoint file",
)
nb.check(
    "score_thr",
    score_thr,
    float,
    lambda v: 0 <= v < 1,
    "must be in [0, 1)",
)

from gflnb import explore
from gflnb.chapters.analysis import load_model
from gflnb.data.coco import CocoDetection, ann_stats

model = load_model(
    checkpoint,
    config or None,
    **({"num_classes": ann_stats(ann)["num_classes"]} if config else {}),
)
ds = CocoDetection(ann, images, model.cfg, train=False)
explorer = explore(model, ds, device=device, score_thr=score_thr)
explorer.seek(0)  # the first image with a detection at the threshold
explorer
