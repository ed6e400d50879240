"""Numbers behind the notebooks' figures: run logs, model loading, learned box distributions.

Plotting lives in :mod:`gflnb.chapters.viz`; this module only computes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..engine.checkpoint import load_checkpoint, read_checkpoint
from ..config import GFLConfig, from_dict, get_config
from ..data.coco import CocoDetection, Collate
from ..model.detector import GFL
from ..engine.predict import dist_std, entropy  # noqa: F401  (their home: the per-box uncertainty of gflnb.Detector)

SIDES = ("left", "top", "right", "bottom")

# The seed table (SEED.md): COCO val box AP and fps (RTX 2080Ti, batch 1) of the model-zoo weights.
SEED_RESULTS = {
    "gfl_r50_fpn_1x_coco": dict(backbone="R-50", schedule="1x", multiscale=False, fps=19.5, box_ap=40.2),
    "gfl_r50_fpn_ms-2x_coco": dict(backbone="R-50", schedule="2x", multiscale=True, fps=19.5, box_ap=42.9),
    "gfl_r101_fpn_ms-2x_coco": dict(backbone="R-101", schedule="2x", multiscale=True, fps=14.7, box_ap=44.7),
    "gfl_r101-dconv-c3-c5_fpn_ms-2x_coco": dict(backbone="R-101-dcnv2", schedule="2x", multiscale=True, fps=12.9,
                                               box_ap=47.1),
    "gfl_x101-32x4d_fpn_ms-2x_coco": dict(backbone="X-101-32x4d", schedule="2x", multiscale=True, fps=12.1,
                                         box_ap=45.9),
    "gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco": dict(backbone="X-101-32x4d-dcnv2", schedule="2x", multiscale=True,
                                                     fps=10.7, box_ap=48.1),
}


def read_log(work_dir: str | Path) -> pd.DataFrame:
    """The training log (``log.jsonl``) as a frame, one row per iteration."""
    rows = [json.loads(ln) for ln in (Path(work_dir) / "log.jsonl").read_text().splitlines() if ln.strip()]
    return pd.DataFrame([r for r in rows if "loss" in r])


def load_model(checkpoint: str | Path, config: Optional[str | GFLConfig] = None, **overrides: Any) -> GFL:
    """A model from a checkpoint: gflnb's files carry their config; mmdet's need ``config`` (a preset)."""
    ck = read_checkpoint(checkpoint)
    meta = ck.get("meta", {})
    if config is None and isinstance(meta, dict) and "config" in meta and isinstance(meta["config"], dict):
        cfg = from_dict({**meta["config"], **overrides})
    else:
        cfg = get_config(config or "gfl_r50_fpn_1x_coco", **overrides)
    model = GFL(cfg)
    load_checkpoint(model, ck)
    return model.eval()


@torch.no_grad()
def predict_images(model: GFL, ds: CocoDetection, indices: Sequence[int], device: str = "cpu",
                   with_dist: bool = True, batch_size: int = 8) -> list[dict]:
    """Predictions (with distributions) for some dataset images, boxes in original-image pixels."""
    collate = Collate(ds.cfg)
    out = []
    model = model.inference_net(device)  # the path gflnb evaluate runs, built once per weights
    for i in range(0, len(indices), batch_size):
        samples = [ds[j] for j in indices[i:i + batch_size]]
        images, _, metas = collate(samples)
        dets = model.predict(images.to(device), metas, rescale=True, with_dist=with_dist)
        for d, m in zip(dets, metas):
            out.append(dict(meta=m, **{k: v.cpu() for k, v in d.items()}))
    return out


def best_match(iou: Tensor, scores: Tensor, iou_match: float) -> Optional[int]:
    """The highest-scoring detection with IoU >= ``iou_match`` (``iou [D]``, same class only)."""
    ok = (iou >= iou_match).nonzero().view(-1)
    return None if not len(ok) else int(ok[scores[ok].argmax()])


def object_view(model: GFL, ds: CocoDetection, ann_id: int, iou_match: float = 0.5, device: str = "cpu",
                title: str = "") -> Optional[dict]:
    """A gt object and the detection :func:`edge_table` matched to it, as the keyword arguments of
    :func:`gflnb.chapters.viz.draw_edge_distributions` (None when no detection matches)."""
    from torchvision.ops import box_iou

    from ..data.preprocess import load_image
    ann = ds.coco.anns[int(ann_id)]
    i = next(k for k, r in enumerate(ds.records) if r.img_id == ann["image_id"])
    rec = ds.records[i]
    g = list(rec.ann_ids).index(int(ann_id))
    p = predict_images(model, ds, [i], device=device)[0]
    if not len(p["boxes"]):
        return None
    iou = box_iou(torch.from_numpy(rec.boxes[g:g + 1]), p["boxes"])[0]
    iou[p["labels"] != int(rec.labels[g])] = 0
    d = best_match(iou, p["scores"], iou_match)
    if d is None:
        return None
    return dict(img_bgr=load_image(rec.path), box=p["boxes"][d].numpy(), dist=p["dists"][d].numpy(),
                stride=float(p["strides"][d]), scale=p["meta"]["scale_factor"], gt=rec.boxes[g],
                ambiguity=ann.get("edge_ambiguity"), title=title or f"object {ann_id}")


def edge_table(model: GFL, ds: CocoDetection, max_images: Optional[int] = None, device: str = "cpu",
               iou_match: float = 0.5) -> pd.DataFrame:
    """One row per (matched gt, side): the learned distribution's spread against the edge's truth.

    Each gt is matched to the highest-scoring detection of its class with IoU >= ``iou_match``.
    Columns: ``side``, ``entropy`` (nats), ``top1`` (mass of the largest bin), ``std_bins`` and
    ``std_px`` (spread in bins and in original-image pixels), ``bin_px`` (one bin in original-image
    pixels), ``bimodal``, ``abs_err_px`` (|predicted side - gt side|), ``score``, ``iou``, and where
    the annotation has them, ``ambiguity``, ``blur`` (px), ``blur_bins``, ``occlusion`` and ``kind``
    (:data:`gflnb.chapters.spread.EDGE_KINDS`).
    """
    from torchvision.ops import box_iou

    from .spread import edge_kind, is_bimodal
    idx = list(range(len(ds) if max_images is None else min(max_images, len(ds))))
    preds = predict_images(model, ds, idx, device)
    rows = []
    for i, p in zip(idx, preds):
        rec = ds.records[i]
        if not len(rec.boxes) or not len(p["boxes"]):
            continue
        gts = torch.from_numpy(rec.boxes)
        iou = box_iou(gts, p["boxes"])
        iou[torch.from_numpy(rec.labels)[:, None] != p["labels"][None, :]] = 0
        sf = p["meta"]["scale_factor"]
        for g in range(len(gts)):
            d = best_match(iou[g], p["scores"], iou_match)
            if d is None:
                continue
            ann = ds.coco.anns[int(rec.ann_ids[g])]
            probs = p["dists"][d].numpy()  # [4, R+1]
            stride = float(p["strides"][d])
            ent, top1, std, bimodal = entropy(probs), probs.max(-1), dist_std(probs), is_bimodal(probs)
            for k, side in enumerate(SIDES):
                scale = sf[0] if k % 2 == 0 else sf[1]
                row = dict(image_id=rec.img_id, ann_id=int(rec.ann_ids[g]), label=int(rec.labels[g]), side=side,
                           entropy=float(ent[k]), top1=float(top1[k]), std_bins=float(std[k]),
                           std_px=float(std[k] * stride / scale), bin_px=stride / scale, bimodal=bool(bimodal[k]),
                           abs_err_px=float(abs(p["boxes"][d, k] - gts[g, k])), score=float(p["scores"][d]),
                           iou=float(iou[g, d]), gt_size=float(min(gts[g, 2] - gts[g, 0], gts[g, 3] - gts[g, 1])))
                for key, name in (("edge_ambiguity", "ambiguity"), ("edge_blur", "blur"),
                                  ("edge_occlusion", "occlusion")):
                    if key in ann:
                        row[name] = float(ann[key][k])
                rows.append(row)
    table = pd.DataFrame(rows)
    if "blur" in table and "occlusion" in table:
        table["blur_bins"] = table["blur"] / table["bin_px"]
        table["kind"] = edge_kind(table["blur"], table["occlusion"])
    return table


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation with the sample size (nan when undefined)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return dict(pearson=math.nan, spearman=math.nan, n=int(len(x)))
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return dict(pearson=float(np.corrcoef(x, y)[0, 1]), spearman=float(np.corrcoef(rx, ry)[0, 1]), n=int(len(x)))


# ------------------------------------------------------------------ chapter 7: the paper's Fig. 2
# Quality components whose ranking score is a class score times a separately trained quality
# (Table 1a's "separate branch"); DGQP also factors, but its product is what QFL trains.
SEPARATE_QUALITIES = ("centerness", "iou")
BACKGROUND_IOU = 0.3  # below this IoU with every gt an anchor's prediction is background
POSITIVE_IOU = 0.5  # at or above it with some gt, a positive-like prediction
_QUANTILES = (("q50", 0.5), ("q90", 0.9), ("q99", 0.99), ("q999", 0.999), ("max", 1.0))


@torch.no_grad()
def anchor_scores(model: GFL, ds: CocoDetection, max_images: Optional[int] = 50, device: str = "cpu",
                  batch_size: int = 8) -> dict[str, Any]:
    """Every anchor's ranking score on the first ``max_images`` images (None: all), with its IoU.

    Returns ``dict(quality, box, separate, images, score, cls, quality_score, iou, level, image)``:
    the model's ``quality``/``box`` config values, whether the quality is a separate branch, the
    image count, then ``[N]`` arrays over the N anchors of all levels: ``score`` (the max over
    classes of what ``GFLHead.predict`` ranks by, before its threshold), ``cls`` and
    ``quality_score`` (the class score and the quality factor, None for ``none``/``qfl``),
    ``iou`` (the decoded box's best IoU with any gt of the image, 0 without gts), ``level`` and
    ``image`` (dataset index). Anchors whose centre lies on batch padding are left out: they exist
    only because of how images were batched.
    """
    from ..boxes import box_iou
    n = len(ds) if max_images is None else min(int(max_images), len(ds))
    collate = Collate(ds.cfg)
    net = model.inference_net(device)  # the path gflnb evaluate runs, built once per weights
    keys = ("score", "cls", "quality", "iou", "level", "image")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        images, targets, metas = collate([ds[j] for j in idx])
        cls_scores, bbox_preds = net(images.to(device))
        per_image = net.bbox_head.anchor_scores(cls_scores, bbox_preds, metas)
        for j, p, tgt, meta in zip(idx, per_image, targets, metas):
            h, w = meta["img_shape"]
            inside = (p["points"][:, 0] < w) & (p["points"][:, 1] < h)  # [A]
            boxes = p["boxes"][inside]
            gts = tgt["boxes"].to(boxes)  # [M, 4] in the resized image, as the predicted boxes
            iou = box_iou(boxes, gts).max(dim=1)[0] if len(gts) else boxes.new_zeros(len(boxes))
            parts["score"].append(p["score"][inside].cpu().numpy())
            parts["iou"].append(iou.cpu().numpy())
            parts["level"].append(p["level"][inside].cpu().numpy())
            parts["image"].append(np.full(int(inside.sum()), j, np.int64))
            if "quality" in p:
                parts["cls"].append(p["cls"][inside].cpu().numpy())
                parts["quality"].append(p["quality"][inside].cpu().numpy())
    cat = {k: (np.concatenate(v) if v else None) for k, v in parts.items()}
    if cat["score"] is None:  # no image: empty arrays, so the summary still works
        cat.update(score=np.zeros(0, np.float32), iou=np.zeros(0, np.float32), level=np.zeros(0, np.int64),
                   image=np.zeros(0, np.int64))
    cfg = model.cfg
    return dict(quality=cfg.quality, box=cfg.box, separate=cfg.quality in SEPARATE_QUALITIES, images=n,
                score=cat["score"], cls=cat["cls"], quality_score=cat["quality"], iou=cat["iou"],
                level=cat["level"], image=cat["image"])


def _quantiles(x: Optional[np.ndarray]) -> Optional[dict[str, float]]:
    if x is None or not len(x):
        return None
    return {k: round(float(np.quantile(x, q)), 6) for k, q in _QUANTILES}


def _hist2d(x: np.ndarray, y: np.ndarray, bins: int) -> list[list[int]]:
    """Counts over ``[0, 1]^2`` in ``bins x bins`` cells: rows bin ``x``, columns ``y`` (1.0 in the last)."""
    h, _, _ = np.histogram2d(np.clip(x, 0, 1), np.clip(y, 0, 1), bins=bins, range=[[0, 1], [0, 1]])
    return h.astype(int).tolist()


def _ranking_auc(pos: np.ndarray, neg: np.ndarray) -> Optional[float]:
    """P(a random positive-like anchor outranks a random background one), ties counting half."""
    if not len(pos) or not len(neg):
        return None
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()[:len(pos)]  # average ranks for ties
    return float((ranks.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def background_summary(scores: dict[str, Any], bg_iou: float = BACKGROUND_IOU, pos_iou: float = POSITIVE_IOU,
                       bins: int = 10) -> dict[str, Any]:
    """The Fig. 2 numbers of an :func:`anchor_scores` result, small and JSON-ready.

    Anchors are background when their best IoU is < ``bg_iou``, positive-like when >= ``pos_iou``,
    ignored in between. Keys: ``quality``, ``separate``, ``images``, ``anchors``, ``background``,
    ``positive`` (counts), ``bg_iou``, ``pos_iou``, ``bins``; ``pos_median_score``; ``bg_outrank_count``
    and ``bg_outrank_frac`` (background anchors scoring above that median); ``ranking_auc``;
    quantile dicts (keys q50, q90, q99, q999, max) ``bg_score_q``, ``pos_score_q``, ``bg_cls_q``,
    ``bg_quality_q``, ``pos_quality_q``; ``bg_lowcls_highq_frac`` (background anchors with class
    score < 0.1 and quality > 0.5, the paper's examples 0.095 / 0.927); and ``bins x bins`` count
    grids over [0, 1]^2: ``hist_score_iou`` (all anchors, rows score, columns IoU) and
    ``hist_bg_cls_quality`` (background anchors, rows class score, columns quality). Entries that
    need a quality factor, or positives, are None without one.
    """
    score = np.asarray(scores["score"], np.float64)
    iou = np.asarray(scores["iou"], np.float64)
    cls = None if scores.get("cls") is None else np.asarray(scores["cls"], np.float64)
    qual = None if scores.get("quality_score") is None else np.asarray(scores["quality_score"], np.float64)
    bg, pos = iou < bg_iou, iou >= pos_iou
    med = float(np.median(score[pos])) if pos.any() else None
    outrank = int((score[bg] > med).sum()) if med is not None else None
    low_high = None
    if cls is not None and qual is not None and bg.any():
        low_high = round(float(((cls[bg] < 0.1) & (qual[bg] > 0.5)).mean()), 6)
    return dict(
        quality=str(scores.get("quality", "")), separate=bool(scores.get("separate", False)),
        images=int(scores.get("images", 0)), anchors=int(len(score)), background=int(bg.sum()),
        positive=int(pos.sum()), bg_iou=float(bg_iou), pos_iou=float(pos_iou), bins=int(bins),
        pos_median_score=None if med is None else round(med, 6),
        bg_outrank_count=outrank,
        bg_outrank_frac=None if outrank is None or not bg.any() else round(outrank / int(bg.sum()), 6),
        ranking_auc=None if (auc := _ranking_auc(score[pos], score[bg])) is None else round(auc, 6),
        bg_score_q=_quantiles(score[bg]), pos_score_q=_quantiles(score[pos]),
        bg_cls_q=None if cls is None else _quantiles(cls[bg]),
        bg_quality_q=None if qual is None else _quantiles(qual[bg]),
        pos_quality_q=None if qual is None else _quantiles(qual[pos]),
        bg_lowcls_highq_frac=low_high,
        hist_score_iou=_hist2d(score, iou, bins),
        hist_bg_cls_quality=None if cls is None or qual is None else _hist2d(cls[bg], qual[bg], bins),
    )
