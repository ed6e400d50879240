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
# # Distribution Focal Loss
#
# Box regression usually predicts one number per side: a **Dirac delta** at the estimated
# distance. Gaussian-based methods add a variance. GFL instead predicts a **general
# distribution** over discretised distances $y_0 < y_1 < \dots < y_n$ (bins of one stride, $n =$
# `reg_max` $= 16$), with a softmax over $n+1$ logits per side. The distance is read off by the
# **Integral**
#
# $$
# \hat y = \sum_{i=0}^{n} P(y_i)\, y_i ,
# $$
#
# which is differentiable, so GIoU can train the box through it. But infinitely many
# distributions share one expectation; **Distribution Focal Loss** tells the network which: it
# puts the mass on the two bins around the target $y$, $y_i \le y < y_{i+1}$,
#
# $$
# \mathrm{DFL}(S_i, S_{i+1}) = -\big((y_{i+1}-y)\log S_i + (y-y_i)\log S_{i+1}\big),
# $$
#
# whose minimum, $S_i = y_{i+1}-y$, $S_{i+1} = y-y_i$, has expectation exactly $y$.

# %% tags=["parameters"]
reg_max = 16  # bins 0..reg_max, in stride units
target = 6.3  # the distance to learn, in bins
steps = 300  # gradient steps for the DFL trajectory
lr = 0.5  # step size of that descent
seed = 0

# %% tags=["hide-input"]
from gflnb.chapters import nbtools as nb

nb.check(
    "reg_max",
    reg_max,
    int,
    lambda v: 2 <= v <= 64,
    "must be an integer in [2, 64]",
)
nb.check(
    "target",
    target,
    float,
    lambda v: 0 <= v < reg_max - 0.1 + 1e-9,
    "must lie in [0, reg_max - 0.1]",
)
nb.check("steps", steps, int, nb.positive, "must be a positive integer")
nb.check("lr", lr, float, nb.positive, "must be positive")
nb.check("seed", seed, int)

import matplotlib.pyplot as plt
import numpy as np
import torch

from gflnb.chapters import viz
from gflnb.boxes import integral
from gflnb.losses import distribution_focal_loss

viz.setup()
_ = torch.manual_seed(seed)
bins = torch.arange(reg_max + 1, dtype=torch.float64)

# %% [markdown]
# ## Dirac, Gaussian, general
#
# Three distributions with the same Integral. The Dirac delta says nothing about confidence; the
# Gaussian can only be symmetric and unimodal; the general distribution can be flat where an edge is
# unclear, skewed, or even bimodal when two positions are plausible (an occluded edge).


# %%
def normalise(p):
    p = np.clip(np.asarray(p, float), 0, None)
    return p / p.sum()


i = int(np.floor(target))
dirac = np.zeros(reg_max + 1)
dirac[i], dirac[i + 1] = i + 1 - target, target - i
gauss = normalise(np.exp(-0.5 * ((bins.numpy() - target) / 1.2) ** 2))
gauss = normalise(gauss)
lo, hi = max(0, i - 3), min(reg_max, i + 3)
w_hi = (target - lo) / (hi - lo)
bimodal = np.zeros(reg_max + 1)
bimodal[lo], bimodal[hi] = 1 - w_hi, w_hi
fig = viz.plot_distributions(
    {
        "Dirac (two-bin)": dirac,
        "Gaussian": gauss,
        "general (bimodal)": bimodal,
    },
    target,
    reg_max,
)

# %% [markdown]
# ## What DFL does to a distribution
#
# Start from uniform logits and descend on DFL alone. The mass flows to the two bins that bracket
# the target, in the proportions that make the Integral equal to it. For contrast, descend on an
# L1 loss of the Integral alone: it reaches the right expectation too, but with whatever spread
# it happens to have, because nothing asks it to concentrate.


# %%
def descend(loss_fn, steps, lr):
    z = torch.zeros(
        1, reg_max + 1, dtype=torch.float64, requires_grad=True
    )
    snaps, curve = [], []
    keep = sorted({0, 5, 20, 60, steps // 2, steps})
    for s in range(steps + 1):
        p = z.softmax(-1)
        if s in keep:
            snaps.append((s, p.detach().numpy()[0]))
        loss = loss_fn(z)
        curve.append(float((p.detach() * bins).sum()))
        if s == steps:
            break
        loss.backward()
        with torch.no_grad():
            z -= lr * z.grad
            z.grad = None
    return snaps, curve


t = torch.tensor([target], dtype=torch.float64)
dfl_snaps, dfl_curve = descend(
    lambda z: distribution_focal_loss(z, t).sum(), steps, lr
)
l1_snaps, l1_curve = descend(
    lambda z: ((z.softmax(-1) * bins).sum() - t).abs().sum(), steps, lr
)
fig = viz.plot_dfl_trajectory(dfl_snaps, target, reg_max)
fig.suptitle("gradient descent on DFL", y=1.04)
fig = viz.plot_dfl_trajectory(l1_snaps, target, reg_max)
fig.suptitle("gradient descent on |Integral - target| only", y=1.04)

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(dfl_curve, label="DFL")
ax.plot(l1_curve, label="L1 on the Integral")
ax.axhline(target, color="k", ls="--", lw=0.8, label="target")
ax.set(
    xlabel="step",
    ylabel="Integral (bins)",
    title="both reach the target expectation",
)
ax.legend()
final_dfl, final_l1 = dfl_snaps[-1][1], l1_snaps[-1][1]
top2 = lambda p: float(np.sort(p)[-2:].sum())
print(
    f"mass on the two nearest bins: DFL {top2(final_dfl):.3f}, "
    "L1-on-Integral "
    f"{top2(final_l1):.3f}"
)

# %% [markdown]
# ## `reg_max` and the bin width
#
# Distances are measured in units of the level's stride: a bin is 8 px wide on P3 and 128 px on
# P7, and the farthest reachable edge is `reg_max` strides from the anchor centre. With ATSS
# assigning large objects to coarse levels, 16 bins cover every COCO box, while the fine levels
# keep a fine resolution for small ones.

# %%
strides = np.array([8, 16, 32, 64, 128])
fig, ax = plt.subplots(figsize=(7, 3.2))
for r in (8, 16, 32):
    ax.plot(strides, strides * r, "o-", label=f"reg_max = {r}")
ax.set(
    xscale="log",
    yscale="log",
    xlabel="stride (px) = bin width",
    ylabel="largest distance (px)",
    title="reach of one side per FPN level",
)
ax.set_xticks(strides, [str(s) for s in strides])
ax.legend()

# %% [markdown]
# ## How DFL and GIoU interact
#
# GIoU sees only the Integral, so it is blind to the shape of the distribution; DFL grows with the
# spread even when the expectation is right. In GFL both act on the same logits (weights 2.0 and
# 0.25): GIoU places the box, DFL sharpens the distribution around it, and where the data cannot
# say where the edge is, the two pull less hard and the distribution stays wide. Below: Gaussian
# distributions centred on the target with growing spread.

# %%
sigmas = np.linspace(0.3, 4, 30)
dfl_vals, means = [], []
for s in sigmas:
    p = torch.tensor(
        normalise(np.exp(-0.5 * ((bins.numpy() - target) / s) ** 2))
    )
    z = p.log()[None]
    dfl_vals.append(float(distribution_focal_loss(z, t)))
    means.append(float(integral(z.repeat(1, 4), reg_max)[0, 0]))
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(sigmas, dfl_vals, label="DFL")
ax.plot(
    sigmas,
    np.abs(np.array(means) - target),
    label="|Integral - target| (what GIoU sees)",
)
ax.set(
    xlabel="spread of the distribution (bins)",
    ylabel="loss",
    title="same expectation, growing spread",
)
ax.legend()

# %% [markdown]
# ## What we learned
#
# * The Integral turns a distribution into a distance, so GIoU trains the box end to end.
# * DFL picks, among all distributions with the right expectation, the one concentrated on the two
#   bins around the target; the L1 (or GIoU) loss alone leaves the spread unconstrained.
# * The spread a trained model keeps is therefore informative: chapter 5 measures it on edges whose
#   ambiguity we know.

# %% tags=["remove-cell"]
nb.record(
    chapter="dfl",
    reg_max=reg_max,
    target=target,
    steps=steps,
    dfl_final_integral=dfl_curve[-1],
    l1_final_integral=l1_curve[-1],
    dfl_top2_mass=top2(final_dfl),
    l1_top2_mass=top2(final_l1),
)
