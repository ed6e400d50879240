"""Plotting helpers for the notebooks (matplotlib and seaborn). Every function returns its figure."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib import patches

from ..engine.evaluate import AP_NAMES
from ..study.stats import fmt_estimate
from .analysis import SIDES, correlation
from .gallery import PALETTE, draw_edge_distributions


def setup() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight", "axes.titleweight": "bold"})


# ------------------------------------------------------------------ chapter 1: QFL
def qfl_family(sigma: np.ndarray, y: float, beta: float) -> dict[str, np.ndarray]:
    """BCE, focal loss (one-hot y) and QFL (soft y) as functions of the predicted score sigma."""
    s = torch.tensor(sigma, dtype=torch.float64)
    x = torch.logit(s)
    bce = F.binary_cross_entropy_with_logits(x, torch.full_like(x, y), reduction="none")
    qfl = bce * (y - s).abs().pow(beta)
    hard = 1.0 if y > 0 else 0.0
    bce_hard = F.binary_cross_entropy_with_logits(x, torch.full_like(x, hard), reduction="none")
    pt = s if hard else 1 - s
    focal = bce_hard * (1 - pt).pow(beta)  # focal loss with alpha = 1 on the one-hot target
    return dict(BCE=bce.numpy(), FL=focal.numpy(), QFL=qfl.numpy())


def plot_qfl_vs_focal(y: float = 0.7, betas: Sequence[float] = (0.5, 1, 2, 4)):
    """QFL for several beta against BCE and focal loss, and QFL's gradient w.r.t. the logit."""
    sigma = np.linspace(0.001, 0.999, 400)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    base = qfl_family(sigma, y, 2.0)
    axes[0].plot(sigma, base["BCE"], label=f"BCE (soft target {y})", color="0.4", ls="--")
    axes[0].plot(sigma, base["FL"], label="focal loss (one-hot target 1, beta=2)", color=PALETTE[3])
    for i, b in enumerate(betas):
        axes[0].plot(sigma, qfl_family(sigma, y, b)["QFL"], label=f"QFL beta={b}", color=PALETTE[i])
    axes[0].axvline(y, color="k", lw=0.8)
    axes[0].set(xlabel=r"predicted score $\sigma$", ylabel="loss", title=f"positive, IoU target y = {y}", ylim=(0, 2))
    axes[0].legend(fontsize=8)
    for i, b in enumerate(betas):
        axes[1].plot(sigma, qfl_family(sigma, 0.0, b)["QFL"], label=f"QFL beta={b} (= focal loss)", color=PALETTE[i])
    axes[1].plot(sigma, qfl_family(sigma, 0.0, 2)["BCE"], label="BCE", color="0.4", ls="--")
    axes[1].set(xlabel=r"predicted score $\sigma$", ylabel="loss", title="negative (y = 0)", ylim=(0, 3))
    axes[1].legend(fontsize=8)
    for i, b in enumerate(betas):
        x = torch.logit(torch.tensor(sigma)).requires_grad_()
        from ..losses import _QualityFocal
        loss = _QualityFocal.apply(x, torch.full_like(x, y), float(b))
        loss.sum().backward()
        axes[2].plot(sigma, x.grad.numpy(), label=f"beta={b}", color=PALETTE[i])
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].axvline(y, color="k", lw=0.8)
    axes[2].set(xlabel=r"predicted score $\sigma$", ylabel=r"$\partial$QFL / $\partial$logit",
                title=f"gradient (target y = {y})")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_score_vs_iou(results: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Predicted score against true IoU, one panel per method; Pearson r over the positives."""
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (name, (iou, score, pos)) in zip(axes, results.items()):
        c = correlation(iou[pos], score[pos])
        ax.scatter(iou[~pos], score[~pos], s=5, alpha=0.3, color="0.6", label="negatives (background)")
        ax.scatter(iou[pos], score[pos], s=5, alpha=0.4, color=PALETTE[0], label="positives")
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
        ax.set(xlabel="true IoU of the box", ylabel="predicted score",
               title=f"{name}\nPearson r (positives) = {c['pearson']:.2f}", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ chapter 2: DFL
def plot_distributions(dists: dict[str, np.ndarray], target: float, reg_max: int):
    """Bar plots of distributions over bins 0..reg_max, with the target and each expectation."""
    fig, axes = plt.subplots(1, len(dists), figsize=(4.2 * len(dists), 3.4), sharey=True)
    bins = np.arange(reg_max + 1)
    for ax, (name, p) in zip(np.atleast_1d(axes), dists.items()):
        ax.bar(bins, p, color=PALETTE[0], width=0.8)
        ax.axvline(target, color=PALETTE[3], lw=2, label=f"target y = {target}")
        ax.axvline((p * bins).sum(), color="k", ls="--", label=f"Integral = {(p * bins).sum():.2f}")
        ax.set(title=name, xlabel="bin (stride units)", ylabel="probability")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_dfl_trajectory(snapshots: list[tuple[int, np.ndarray]], target: float, reg_max: int):
    """Small multiples: a distribution at several steps of gradient descent on DFL."""
    fig, axes = plt.subplots(1, len(snapshots), figsize=(2.8 * len(snapshots), 2.8), sharey=True)
    bins = np.arange(reg_max + 1)
    for ax, (step, p) in zip(np.atleast_1d(axes), snapshots):
        ax.bar(bins, p, color=PALETTE[0], width=0.8)
        ax.axvline(target, color=PALETTE[3], lw=1.5)
        ax.set(title=f"step {step}", xlabel="bin")
    np.atleast_1d(axes)[0].set_ylabel("probability")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ chapter 3: training
def plot_training(log: pd.DataFrame, smooth: int = 20):
    """Loss terms, total loss, learning rate and throughput against iteration."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5))
    w = max(1, min(smooth, len(log) // 5 or 1))
    for i, k in enumerate(("loss_cls", "loss_bbox", "loss_dfl")):
        axes[0, 0].plot(log["iter"], log[k].rolling(w, min_periods=1).mean(), label=k, color=PALETTE[i])
    axes[0, 0].set(title="loss terms (rolling mean)", xlabel="iteration", ylabel="loss")
    axes[0, 0].legend()
    axes[0, 1].plot(log["iter"], log["loss"], color="0.75", lw=0.6, label="per iteration")
    axes[0, 1].plot(log["iter"], log["loss"].rolling(w, min_periods=1).mean(), color="k", label=f"rolling mean ({w})")
    axes[0, 1].set(title="total loss", xlabel="iteration")
    axes[0, 1].legend()
    axes[1, 0].plot(log["iter"], log["lr"], color=PALETTE[2])
    axes[1, 0].set(title="learning rate (warmup, then step decay)", xlabel="iteration", ylabel="lr")
    axes[1, 1].plot(log["iter"], log["imgs_per_s"].rolling(w, min_periods=1).mean(), color=PALETTE[4])
    axes[1, 1].set(title=f"throughput: median {log['imgs_per_s'].median():.1f} images/s", xlabel="iteration",
                   ylabel="images / s")
    fig.tight_layout()
    return fig


def draw_detections(ax, img_bgr: np.ndarray, det: dict, names: Sequence[str], gts: Optional[np.ndarray] = None,
                    score_thr: float = 0.3, title: str = ""):
    """An image with its detections above ``score_thr`` (and gts dashed)."""
    ax.imshow(img_bgr[..., ::-1])
    if gts is not None:
        for b in gts:
            ax.add_patch(patches.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="white",
                                           ls="--", lw=1.2))
    for b, s, lab in zip(det["boxes"].numpy(), det["scores"].numpy(), det["labels"].numpy()):
        if s < score_thr:
            continue
        color = PALETTE[int(lab) % len(PALETTE)]
        ax.add_patch(patches.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec=color, lw=2))
        ax.text(b[0], b[1] - 2, f"{names[int(lab)]} {s:.2f}", color="white", fontsize=7,
                bbox=dict(facecolor=color, alpha=0.8, pad=1, lw=0))
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)


# ------------------------------------------------------------------ chapter 4: evaluation
def plot_ap_comparison(ours: dict[str, float], seed: Optional[dict[str, float]], title: str):
    keys = list(AP_NAMES)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(keys))
    ax.bar(x - 0.2 if seed else x, [ours[k] for k in keys], width=0.4, label="this run", color=PALETTE[0])
    if seed:
        ax.bar(x + 0.2, [seed.get(k, np.nan) for k in keys], width=0.4, label="seed table (COCO)", color=PALETTE[1])
    ax.set_xticks(x, keys)
    ax.set(ylabel="AP (%)", title=title, ylim=(0, 100))
    ax.legend()
    fig.tight_layout()
    return fig


def plot_pr_curves(precision: np.ndarray, names: Sequence[str]):
    """Precision-recall at IoU 0.5 and 0.75 per class (COCOeval's [T, R, K, A, M] array, area all, 100 dets)."""
    rec = np.linspace(0, 1, precision.shape[1])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, (t, thr) in zip(axes, ((0, 0.5), (5, 0.75))):
        for k, n in enumerate(names):
            p = precision[t, :, k, 0, -1]
            if (p > -1).any():
                ax.plot(rec, np.where(p > -1, p, np.nan), label=n, color=PALETTE[k % len(PALETTE)])
        ax.set(xlabel="recall", ylabel="precision", title=f"IoU = {thr}", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_calibration(score: np.ndarray, iou: np.ndarray, bins: int = 10):
    """Score against IoU with the best same-class gt: scatter, binned means and Pearson r."""
    c = correlation(score, iou)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    axes[0].hexbin(iou, score, gridsize=30, cmap="Blues", mincnt=1, bins="log")
    axes[0].set(xlabel="IoU with the best-matching gt", ylabel="score",
                title=f"score vs IoU: Pearson r = {c['pearson']:.3f}, Spearman = {c['spearman']:.3f} (n={c['n']})")
    edges = np.linspace(0, 1, bins + 1)
    mid = (edges[:-1] + edges[1:]) / 2
    which = np.clip(np.digitize(score, edges) - 1, 0, bins - 1)
    mean_iou = [iou[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
    axes[1].plot(mid, mean_iou, "o-", color=PALETTE[0], label="mean IoU per score bin")
    axes[1].plot([0, 1], [0, 1], "k--", lw=0.8, label="score = IoU")
    axes[1].set(xlabel="score", ylabel="mean IoU", title="reliability: does the score predict IoU?", xlim=(0, 1),
                ylim=(0, 1))
    axes[1].legend()
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ chapter 5: learned distributions
def plot_distribution_gallery(items: Sequence[dict], cols: int = 2, width: float = 9.0):
    """:func:`gflnb.chapters.gallery.draw_edge_distributions` for several detections; each item is its
    keyword arguments (``img_bgr``, ``box``, ``dist``, ``stride``, and optionally ``scale``, ``gt``,
    ``ambiguity``, ``title``), as :func:`gflnb.chapters.analysis.object_view` returns them."""
    rows = int(np.ceil(len(items) / cols))
    cell_w = width / cols
    height = rows * cell_w + 0.5
    fig = plt.figure(figsize=(width, height))
    outer = fig.add_gridspec(rows, cols, wspace=0.1, hspace=0.14, top=1.0, bottom=0.5 / height)
    for n, it in enumerate(items):
        draw_edge_distributions(fig, outer[n // cols, n % cols], **it)
    handles = [plt.Line2D([], [], color="0.2", lw=1.8), plt.Line2D([], [], color="0.2", lw=1.4, ls=(0, (3, 2)))]
    fig.legend(handles, ["predicted edge (its distribution's mean)", "gt edge"], loc="lower center", ncol=2,
               fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return fig


def plot_side_profiles(dists: np.ndarray, titles: Sequence[str], ambiguity: Optional[np.ndarray] = None):
    """Per-side bar profiles of several detections: rows are detections, columns sides. Sides with
    a recorded ambiguity above zero are red."""
    n = len(dists)
    fig, axes = plt.subplots(n, 4, figsize=(9, 1.5 * n + 0.4), sharex=True, squeeze=False)
    bins = np.arange(dists.shape[-1])
    for i in range(n):
        for k in range(4):
            ax = axes[i, k]
            a = None if ambiguity is None else ambiguity[i, k]
            col = PALETTE[3] if a is not None and a > 0 else PALETTE[0]
            ax.bar(bins, dists[i, k], color=col, width=0.85)
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=8)
            if i == 0:
                ax.set_title(SIDES[k], fontsize=10)
            if a is not None:
                ax.text(0.98, 0.86, f"ambiguity {a:.2f}", transform=ax.transAxes, ha="right", fontsize=8)
        axes[i, 0].set_ylabel(titles[i], fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("bin (strides from the anchor)", fontsize=8)
    fig.tight_layout()
    return fig


def _pointrange(ax, x: Sequence, est: Sequence[float], lo: Sequence[float], hi: Sequence[float], color, label=None):
    est, lo, hi = (np.asarray(v, float) for v in (est, lo, hi))
    ax.errorbar(x, est, yerr=[est - lo, hi - est], fmt="o", color=color, capsize=4, lw=1.6, ms=6, label=label)


KIND_COLORS = {"clear": PALETTE[0], "blurred": PALETTE[1], "occluded": PALETTE[2], "blurred+occluded": PALETTE[4]}


def plot_spread_by_kind(kinds: pd.DataFrame):
    """Mean entropy, std (bins) and bimodal share per edge kind, with 95% intervals over objects
    (the table of :func:`gflnb.chapters.spread.by_kind`)."""
    cols = [("entropy", "entropy (nats)"), ("std_bins", "std (bins)"), ("bimodal", "bimodal share")]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    x = np.arange(len(kinds))
    for ax, (col, name) in zip(axes, cols):
        for i, (kind, r) in enumerate(kinds.iterrows()):
            _pointrange(ax, [i], [r[col]], [r[f"{col}_lo"]], [r[f"{col}_hi"]], KIND_COLORS.get(kind, "0.3"))
        ax.set_xticks(x, [k.replace("+", "+\n") for k in kinds.index], fontsize=9)
        ax.set_title(name, fontsize=11)
        ax.tick_params(axis="y", labelsize=10)
        ax.set_xlim(-0.5, len(kinds) - 0.5)
    fig.suptitle("spread of the learned distributions by edge kind (95% intervals, bootstrap over objects)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _binned(edges: pd.DataFrame, x: str, y: str, bins: Sequence[float], n_boot: int, seed: int):
    from .spread import boot_mean
    cut = pd.cut(edges[x], bins, include_lowest=True)
    rows = []
    for interval, d in edges.groupby(cut, observed=True):
        if len(d) >= 5:
            est, lo, hi = boot_mean(d, y, n_boot=n_boot, seed=seed)
            rows.append((interval.mid, est, lo, hi, len(d)))
    return pd.DataFrame(rows, columns=["x", "est", "lo", "hi", "n"])


def plot_spread_vs_truth(edges: pd.DataFrame, n_boot: int = 2000, seed: int = 0):
    """Binned means with 95% intervals (bootstrap over objects): entropy against the edge's recorded
    ambiguity; for blurred edges, the distribution's std against the blur sigma, both in bins; and
    the actual |error| against the entropy."""
    from .spread import boot_pearson
    has_truth = "ambiguity" in edges
    fig, axes = plt.subplots(1, 3 if has_truth else 1, figsize=(10, 3.7) if has_truth else (4.2, 3.7), squeeze=False)
    axes = axes[0]
    if has_truth:
        b = _binned(edges, "ambiguity", "entropy", [0, 0.001, 0.25, 0.5, 0.75, 1.0], n_boot, seed)
        _pointrange(axes[0], b["x"], b["est"], b["lo"], b["hi"], PALETTE[0])
        r = boot_pearson(edges, "ambiguity", "entropy", n_boot=n_boot, seed=seed)
        axes[0].set(xlabel="recorded ambiguity", ylabel="mean entropy (nats)",
                    title=f"r = {fmt_estimate(*r)}")
        bl = edges[edges["blur"] > 0]
        if len(bl) >= 10:
            q = np.unique(np.quantile(bl["blur_bins"], np.linspace(0, 1, 7)))
            b = _binned(bl, "blur_bins", "std_bins", q, n_boot, seed)
            _pointrange(axes[1], b["x"], b["est"], b["lo"], b["hi"], PALETTE[1])
            r = boot_pearson(bl, "blur_bins", "std_bins", n_boot=n_boot, seed=seed)
            axes[1].set(title=f"blurred: r = {fmt_estimate(*r)}")
        axes[1].set(xlabel="blur sigma (bins)", ylabel="mean std (bins)")
    ax = axes[-1]
    q = np.unique(np.quantile(edges["entropy"], np.linspace(0, 1, 9)))
    e = edges.assign(err_bins=edges["abs_err_px"] / edges["bin_px"])
    b = _binned(e, "entropy", "err_bins", q, n_boot, seed)
    _pointrange(ax, b["x"], b["est"], b["lo"], b["hi"], PALETTE[2])
    r = boot_pearson(edges, "entropy", "abs_err_px", n_boot=n_boot, seed=seed)
    ax.set(xlabel="entropy (nats)", ylabel="mean |predicted - gt edge| (bins)",
           title=f"r(entropy, |error|) = {fmt_estimate(*r)}")
    for a in axes:
        a.title.set_fontsize(11)
        a.xaxis.label.set_fontsize(11)
        a.yaxis.label.set_fontsize(11)
        a.tick_params(labelsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ chapter 7: ablations
VERDICT_COLORS = {"holds": PALETTE[2], "reversed": PALETTE[3], "not resolved": "0.55"}


def plot_ablation_ap(ok: pd.DataFrame, variants: Sequence[str], labels: dict[str, str],
                     metrics: Sequence[str] = ("AP", "AP50", "AP75")):
    """Per variant: each seed's value (dots), the mean (diamond) and the std over seeds (error bar)."""
    variants = [v for v in variants if (ok["variant"] == v).any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics) + 2.5, 0.5 * len(variants) + 1.6),
                             sharey=True, squeeze=False)
    rng = np.random.default_rng(0)  # jitter only, so overlapping seeds stay visible
    for ax, m in zip(axes[0], metrics):
        for i, v in enumerate(variants):
            x = ok.loc[ok["variant"] == v, m].dropna().to_numpy(np.float64)
            color = PALETTE[1] if v == "gfl" else PALETTE[0]
            ax.scatter(x, i + rng.uniform(-0.12, 0.12, len(x)), s=16, color="k", alpha=0.7, zorder=3,
                       label="one seed" if i == 0 else None)
            std = x.std(ddof=1) if len(x) >= 2 else 0.0
            ax.errorbar(x.mean(), i, xerr=std if len(x) >= 2 else None, fmt="D", color=color, ms=7, capsize=4,
                        zorder=2, label="mean ± std over seeds" if i == 0 else None)
        ax.set(xlabel=f"{m} (%)", title=m)
        ax.margins(x=0.15)
    axes[0, 0].set_yticks(range(len(variants)),
                          [f"{labels.get(v, v)} (n={int((ok['variant'] == v).sum())})" for v in variants])
    axes[0, 0].invert_yaxis()
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_claims(claims: pd.DataFrame, confidence: float = 0.95):
    """Each claim's AP difference (better - worse) here with its ``confidence`` interval (columns
    ``lo``, ``hi`` of ``gflnb.study.ablation.claim_table``), beside the paper's."""
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(claims) + 1.6))
    y = np.arange(len(claims))
    for i, r in enumerate(claims.itertuples()):
        color = VERDICT_COLORS[r.verdict]
        if np.isfinite(r.diff):
            err = [[r.diff - r.lo], [r.hi - r.diff]] if np.isfinite(r.lo) else None
            ax.errorbar(r.diff, i, xerr=err, fmt="o", color=color, capsize=4, ms=7)
        if r.paper_diff is not None and np.isfinite(r.paper_diff):
            ax.scatter(r.paper_diff, i, marker="x", color="k", s=40, zorder=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, [f"{r.claim} [{r.verdict}]" for r in claims.itertuples()])
    ax.invert_yaxis()
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f"here: {v}") for v, c in VERDICT_COLORS.items()]
    handles.append(plt.Line2D([], [], marker="x", ls="", color="k", label="the paper (COCO)"))
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set(xlabel=f"AP difference, better - worse (%); error bars: {confidence:.0%} interval (Welch-Satterthwaite t)",
           title="the paper's claims: > 0 is the paper's direction")
    fig.tight_layout()
    return fig


def plot_background(pooled: dict[str, dict], labels: dict[str, str], bg_iou: float = 0.3, pos_iou: float = 0.5):
    """Fig. 2 measured: per variant (columns), anchors' score against IoU (top) and, for models with a
    quality factor, the background anchors' class score against quality (bottom); log colour scale."""
    from matplotlib.colors import LogNorm
    names = sorted(pooled, key=lambda v: (v != "gfl", not pooled[v]["separate"], v))
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 8.2), squeeze=False)
    for j, v in enumerate(names):
        p = pooled[v]
        ax = axes[0, j]
        if p["hist_score_iou"] is None:  # a record written without the histogram
            ax.set_axis_off()
            axes[1, j].set_axis_off()
            continue
        h = np.asarray(p["hist_score_iou"], float)  # rows score, columns IoU
        im = ax.imshow(np.ma.masked_equal(h, 0), origin="lower", extent=(0, 1, 0, 1), aspect="auto", cmap="viridis",
                       norm=LogNorm(vmin=1, vmax=max(2.0, h.max())))
        ax.axvspan(0, bg_iou, color="w", alpha=0.12)
        for x in (bg_iou, pos_iou):
            ax.axvline(x, color="w", lw=0.8, ls="--")
        if p["pos_median_score"] is not None:
            ax.axhline(p["pos_median_score"], color=PALETTE[3], lw=1.2, label="median score, positive-like")
            ax.legend(fontsize=7, loc="upper left")
        ax.set(xlabel="IoU of the decoded box with its best gt", ylabel="ranking score",
               title=f"{labels.get(v, v)}\nbackground above that median: {100 * (p['bg_outrank_frac'] or 0):.2f}%")
        fig.colorbar(im, ax=ax, label="anchors")
        ax = axes[1, j]
        if p["hist_bg_cls_quality"] is None:
            ax.text(0.5, 0.5, "joint score:\nno separate quality factor", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
            continue
        h = np.asarray(p["hist_bg_cls_quality"], float).T  # rows quality, columns class score
        im = ax.imshow(np.ma.masked_equal(h, 0), origin="lower", extent=(0, 1, 0, 1), aspect="auto", cmap="magma",
                       norm=LogNorm(vmin=1, vmax=max(2.0, h.max())))
        ax.add_patch(patches.Rectangle((0, 0.5), 0.1, 0.5, fill=False, ec=PALETTE[2], lw=2))
        ax.set(xlabel="class score", ylabel="quality score",
               title=f"background anchors (IoU < {bg_iou})\nclass < 0.1, quality > 0.5 (box): "
                     f"{100 * (p['bg_lowcls_highq_frac'] or 0):.2f}%")
        fig.colorbar(im, ax=ax, label="anchors")
    fig.tight_layout()
    return fig


def plot_learning_curves(stats: pd.DataFrame, panels: dict[str, tuple[str, Sequence[str]]],
                         labels: dict[str, str], cols: int = 4):
    """AP against epoch, one panel per ``panels`` entry (key -> (title, variants)): per variant the
    mean over seeds (line) and the seeds' range (band), from :func:`gflnb.study.ablation.curve_stats`."""
    keys = [k for k, (_, vs) in panels.items() if stats["variant"].isin(vs).any()]
    if not keys:
        return None
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, min(cols, len(keys)), figsize=(4.3 * min(cols, len(keys)), 3.6 * rows),
                             squeeze=False)
    for ax, k in zip(axes.flat, keys):
        title, variants = panels[k]
        for i, v in enumerate(variants):  # colour by the table's row, so a row keeps it while others are missing
            s = stats[stats["variant"] == v].sort_values("epoch")
            if s.empty:
                continue
            color = PALETTE[i % len(PALETTE)]
            n = int(s["n"].max())
            ax.plot(s["epoch"], s["mean"], "o-", ms=3, color=color, label=f"{labels.get(v, v)} (n={n})")
            ax.fill_between(s["epoch"], s["lo"], s["hi"], color=color, alpha=0.18, lw=0)
        ax.set(title=title, xlabel="epoch", ylabel="validation AP (%)")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig
