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
# # Performance
#
# How fast is gflnb against the plain-PyTorch detectors a user would otherwise reach for,
# torchvision's FCOS and RetinaNet (whose heads are the size of GFL's), and how close is it to what
# the hardware allows? Every number below comes from one run of the suite in `benchmarks/run.py`
# (or a quick version of it, run here), with the compared things **interleaved** in the same
# process, on the same inputs and threads, so that a busy machine slows them alike.
#
# The *floor* of a model is its FLOP count divided by the best fp32 rate this machine attains: the
# median rate of a large 3x3 convolution or a large matmul (whichever is faster), timed in the same
# interleaved rounds as the models. A latency of 1.2x the floor means 20% overhead beyond the
# arithmetic.

# %% tags=["parameters"]
# a full run of benchmarks/run.py; run quick here when missing
results_json = "../benchmarks/results/results.json"
# the same suite with GFLNB_NATIVE_ISA=1 (optional)
native_json = "../benchmarks/results/native/results.json"
# when results_json is missing: the smoke version (512x512, few rounds)
quick = True

# %% tags=["hide-input"]
from gflnb.chapters import nbtools as nb

nb.check("results_json", results_json, str)
nb.check("native_json", native_json, str)
nb.check("quick", quick, bool)

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from gflnb.chapters import viz
from gflnb.engine.benchmark import ONNX_ROW, markdown, run_suite

viz.setup()
path = Path(results_json)
if path.exists():
    res = json.loads(path.read_text())
    source = f"loaded from {results_json}"
else:
    res = run_suite(quick=quick, progress=lambda m: None)
    source = (
        "measured just now (quick suite)" if quick else "measured just now"
    )
print(
    f"{source}:\n{res['machine']}\n"
    f"attained rate {res['conv_gflops']:.0f} GFLOP/s"
)

# %% [markdown]
# ## Inference against the peers and the floor

# %%
rows = []
for shape, models in res["inference"].items():
    for name, r in models.items():
        rows.append(
            dict(
                shape=shape,
                model=name,
                seconds=r["median_s"],
                x_floor=r["x_floor"],
                gflop=r["gflop"],
            )
        )
inf = pd.DataFrame(rows)
fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
for ax, col, title in (
    (axes[0], "seconds", "batch-1 latency (median)"),
    (axes[1], "x_floor", "latency / FLOP floor"),
):
    piv = inf.pivot(index="model", columns="shape", values=col)
    piv.plot.barh(ax=ax)
    ax.set(title=title, xlabel=col.replace("_", " "), ylabel="")
axes[1].axvline(1.0, color="k", lw=0.8)
display(inf.round(3))

# %% [markdown]
# ## The exported model
#
# `gflnb export` writes the inference path to ONNX: backbone, FPN and head, the softmax over the
# bins, the Integral and the distance-to-box decode in the graph, with NMS as a small numpy step
# after it (`gflnb/engine/export.py`). The suite times it in onnxruntime, decode and NMS included, in the
# same interleaved rounds as the torch path (`GFL.predict`) and FCOS, with the same weights' shape.

# %%
onnx_rows = [
    dict(
        shape=shape,
        path=name,
        seconds=m[name]["median_s"],
        vs_fcos=m[name]["median_s"] / m["torchvision fcos"]["median_s"],
        x_floor=m[name]["x_floor"],
    )
    for shape, m in res["inference"].items()
    for name in ("gflnb", ONNX_ROW)
    if name in m
]
if any(r["path"] == ONNX_ROW for r in onnx_rows):
    display(
        pd.DataFrame(onnx_rows)
        .rename(columns={"vs_fcos": "time / FCOS's", "x_floor": "x floor"})
        .round(3)
        .set_index(["shape", "path"])
    )
else:
    print(
        f"{source} has no onnxruntime row (the export extra was missing "
        "when "
        "it ran): "
        "run .venv/bin/python benchmarks/run.py after make setup."
    )

# %% [markdown]
# ## Assignment and losses as the problem grows
#
# ATSS in mmdetection computes the IoU of every anchor with every gt. gflnb computes it only for
# the top-9-per-level candidates of each gt, and the distance matrix it needs for the top-k is
# processed in chunks, so memory stays flat. Left: time, right: extra peak memory (each point in a
# fresh process).

# %%
atss = pd.DataFrame(res["atss"])
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for mode, g in atss.groupby("mode"):
    axes[0].plot(g["n"], g["time_s"], "o-", label=mode)
    axes[1].plot(g["n"], g["extra_mb"], "o-", label=mode)
axes[0].set(
    xscale="log",
    yscale="log",
    xlabel="gts per image",
    ylabel="seconds",
    title="ATSS time (22,400 anchors)",
)
axes[1].set(
    xscale="log",
    xlabel="gts per image",
    ylabel="MB",
    title="ATSS extra peak memory",
)
for ax in axes:
    ax.legend()

# %%
loss_rows = [
    dict(size=s, loss=k, seconds=v["median_s"])
    for s, r in res["losses"].items()
    for k, v in r.items()
]
fig, ax = plt.subplots(figsize=(9, 3.6))
pd.DataFrame(loss_rows).pivot(
    index="loss", columns="size", values="seconds"
).plot.bar(ax=ax, rot=0)
ax.set(
    ylabel="seconds (forward + backward)",
    title="losses at 22,400 anchors x 80 classes per image",
)

# %% [markdown]
# ## The same suite with the CPU's own kernels
#
# By default gflnb caps torch's CPU kernels at AVX2 on every machine, so that training gives the
# same numbers everywhere (`gflnb/numerics/portable.py`). `GFLNB_NATIVE_ISA=1` lifts the cap; on a CPU with
# AVX-512 that is what the second run below measured. Each run's ratios come from its own interleaved
# rounds; the two runs' seconds are from different processes, minutes apart.

# %%
native_path = Path(native_json)
if native_path.exists():
    nat = json.loads(native_path.read_text())
    print(f"portable:\n{res['machine']}\nnative:\n{nat['machine']}")
    cmp_rows = []
    for shape, models in res["inference"].items():
        for name in ("gflnb", "torchvision fcos"):
            if name in models and name in nat["inference"].get(shape, {}):
                a, b = (
                    models[name]["median_s"],
                    nat["inference"][shape][name]["median_s"],
                )
                cmp_rows.append(
                    dict(
                        what=f"inference {shape}: {name}",
                        portable_s=a,
                        native_s=b,
                        native_over_portable=b / a,
                    )
                )
    for name in ("gflnb", "torchvision fcos"):
        if name in res["train_step"] and name in nat["train_step"]:
            a, b = (
                res["train_step"][name]["median_s"],
                nat["train_step"][name]["median_s"],
            )
            cmp_rows.append(
                dict(
                    what=f"training step: {name}",
                    portable_s=a,
                    native_s=b,
                    native_over_portable=b / a,
                )
            )
    display(pd.DataFrame(cmp_rows).round(3))
else:
    print(
        f"no {native_json}: run GFLNB_NATIVE_ISA=1 .venv/bin/python "
        "benchmarks/run.py --out benchmarks/results/native"
    )

# %% [markdown]
# ## The full table

# %%
display(Markdown(markdown(res)))

# %% tags=["remove-cell"]
g = res["inference"][next(iter(res["inference"]))]
nb.record(
    chapter="performance",
    source=source,
    conv_gflops=res["conv_gflops"],
    gflnb_vs_fcos=g["gflnb"]["median_s"]
    / g["torchvision fcos"]["median_s"],
    gflnb_x_floor=g["gflnb"]["x_floor"],
)
