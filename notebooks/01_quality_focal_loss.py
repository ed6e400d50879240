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
# # Quality Focal Loss
#
# A dense detector scores every anchor twice over: *what* is there (classification) and *how well*
# the box fits (localisation quality, e.g. the IoU). FCOS and ATSS train the two with separate
# branches and multiply them at test time. GFL argues that this is inconsistent: the quality
# branch is only ever trained on positives, yet at test time it multiplies the class score of every
# anchor, background included. Its remedy is a **joint representation**: the classification
# output itself is trained to equal the IoU at the gt class, and 0 elsewhere.
#
# Focal loss cannot train a soft target, so the paper generalises it to **Quality Focal Loss**:
#
# $$
# \mathrm{QFL}(\sigma) = -\,|y-\sigma|^{\beta}\,\big((1-y)\log(1-\sigma) + y\log\sigma\big),
# $$
#
# where $\sigma$ is the predicted score and $y \in [0, 1]$ the IoU target. For $y \in \{0, 1\}$
# this is focal loss (with $\alpha = 1$); the modulating factor $|y-\sigma|^\beta$ is the distance
# to the *soft* target, and its minimum sits at $\sigma = y$.

# %% tags=["parameters"]
target_iou = 0.7  # the soft target y of the positive example in the plots
# modulating exponents to compare (the paper uses 2)
betas = [0.5, 1.0, 2.0, 4.0]
toy_steps = 400  # optimisation steps of the toy experiment
toy_samples = 4000  # anchors in the toy experiment
seed = 0

# %% tags=["hide-input"]
from gflnb.chapters import nbtools as nb

nb.check(
    "target_iou",
    target_iou,
    float,
    lambda v: 0 < v < 1,
    "must lie strictly between 0 and 1",
)
nb.check(
    "betas",
    betas,
    list,
    lambda v: len(v) > 0
    and all(isinstance(b, (int, float)) and b > 0 for b in v),
    "must be a non-empty list of positive numbers",
)
nb.check(
    "toy_steps", toy_steps, int, nb.positive, "must be a positive integer"
)
nb.check(
    "toy_samples",
    toy_samples,
    int,
    lambda v: v >= 100,
    "must be at least 100",
)
nb.check("seed", seed, int)

import numpy as np
import torch

from gflnb.chapters import viz
from gflnb.chapters.analysis import correlation
from gflnb.losses import quality_focal_loss
from gflnb.chapters.toy import compare

viz.setup()
_ = torch.manual_seed(seed)

# %% [markdown]
# ## QFL against BCE and focal loss
#
# Left: a positive whose box has IoU $y$ with its gt. BCE with the soft target has its minimum at
# $y$ but never lets go of easy examples; focal loss pushes the score all the way to 1 whatever the
# IoU. QFL keeps the minimum at $y$ and, for $\beta > 0$, down-weights examples already close to
# it. Middle: for a negative ($y = 0$) QFL *is* focal loss: a high score on background is
# punished hard, and this is the term that keeps background anchors out of the joint score.
# Right: the gradient changes sign at $\sigma = y$, so QFL pulls the score *to* the IoU from both
# sides, the larger $\beta$ the flatter near the target.

# %%
fig = viz.plot_qfl_vs_focal(target_iou, betas)

# %% [markdown]
# The package's QFL (`gflnb.losses.quality_focal_loss`) is checked against mmdetection's own
# outputs in the tests; a quick look at one row makes the joint target concrete: class 2 is the gt
# class with IoU 0.7, the other classes are negatives.

# %%
logits = torch.tensor([[-2.0, 0.5, 1.2, -3.0]])
per_class = quality_focal_loss(
    logits, torch.tensor([2]), torch.tensor([target_iou])
)
print(
    f"scores {logits.sigmoid().numpy().round(3)} -> QFL summed over "
    "classes "
    "= "
    f"{per_class.item():.4f}"
)

# %% [markdown]
# ## A toy experiment: does the score track the IoU?
#
# Synthetic "anchors" carry a class and an IoU; their features encode both, with noise. Three heads
# see the same features: focal loss on one-hot classes; focal loss plus a separate IoU branch
# trained on positives (score = class x IoU, the separate representation); and QFL on the joint
# soft target. A good detector ranks boxes by how well they fit, so what matters is how the score
# tracks the IoU among positives. The negatives of this toy are easy to tell apart, so it cannot show
# the joint form's advantage on background (that needs a real detector: chapter 4); it shows what a
# score learns about localisation quality under each loss.

# %%
results = compare(steps=toy_steps, seed=seed, n=toy_samples)
fig = viz.plot_score_vs_iou(results)
corr = {
    name: correlation(iou[pos], score[pos])["pearson"]
    for name, (iou, score, pos) in results.items()
}
for name, r in corr.items():
    print(f"{name:32s} Pearson r(score, IoU) on positives = {r:.3f}")
short = dict(zip(corr, ("r_focal", "r_separate", "r_qfl")))

# %% [markdown]
# ## What we learned
#
# * QFL is focal loss with a soft target: its minimum sits at the IoU, and for negatives it is
#   exactly focal loss, so background scores are pushed to zero by the very loss that trains the
#   quality.
# * Trained with one-hot targets, a classifier's score carries almost no information about the box
#   (r near 0.1 in the toy); the joint QFL score follows the IoU (r near 0.9) without any extra
#   branch, which is what NMS and AP reward.
# * A separate IoU branch ranks positives as well or slightly better here, where background is
#   trivially separable; but it is never trained on background, and in a real detector that is where
#   its estimates go wrong. Chapter 4 measures the score-IoU relation of a trained GFL.

# %% tags=["remove-cell"]
nb.record(
    chapter="qfl",
    target_iou=target_iou,
    betas=betas,
    toy_steps=toy_steps,
    **{short[k]: v for k, v in corr.items()},
)
