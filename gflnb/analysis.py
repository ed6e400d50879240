"""Numbers behind the notebooks' figures: run logs, model loading, learned box distributions.

Plotting lives in :mod:`gflnb.viz`; this module only computes.
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

from .checkpoint import load_checkpoint, read_checkpoint
from .config import GFLConfig, from_dict, get_config
from .data import CocoDetection, Collate
from .detector import GFL

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


def entropy(p: Tensor | np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy (nats) of distributions along ``axis``."""
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.clip(p, 1e-12, 1))).sum(axis)


def dist_std(p: Tensor | np.ndarray) -> np.ndarray:
    """Standard deviation (in bins) of distributions over bins 0..R on the last axis."""
    p = np.asarray(p, dtype=np.float64)
    bins = np.arange(p.shape[-1])
    mean = (p * bins).sum(-1, keepdims=True)
    return np.sqrt((p * (bins - mean) ** 2).sum(-1))


@torch.no_grad()
def predict_images(model: GFL, ds: CocoDetection, indices: Sequence[int], device: str = "cpu",
                   with_dist: bool = True, batch_size: int = 8) -> list[dict]:
    """Predictions (with distributions) for some dataset images, boxes in original-image pixels."""
    collate = Collate(ds.cfg)
    out = []
    model.eval().to(device)
    for i in range(0, len(indices), batch_size):
        samples = [ds[j] for j in indices[i:i + batch_size]]
        images, _, metas = collate(samples)
        dets = model.predict(images.to(device), metas, rescale=True, with_dist=with_dist)
        for d, m in zip(dets, metas):
            out.append(dict(meta=m, **{k: v.cpu() for k, v in d.items()}))
    return out


def edge_table(model: GFL, ds: CocoDetection, max_images: Optional[int] = None, device: str = "cpu",
               iou_match: float = 0.5) -> pd.DataFrame:
    """One row per (matched gt, side): the learned distribution's spread against the edge's truth.

    Each gt is matched to the highest-scoring detection of its class with IoU >= ``iou_match``.
    Columns: ``side``, ``entropy`` (nats), ``top1`` (mass of the largest bin), ``std_px`` (spread
    in original-image pixels), ``abs_err_px`` (|predicted side - gt side|), ``score``, ``iou``, and
    where the annotation has them, ``ambiguity``, ``blur``, ``occlusion``.
    """
    from torchvision.ops import box_iou
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
            ok = (iou[g] >= iou_match).nonzero().view(-1)
            if not len(ok):
                continue
            d = ok[p["scores"][ok].argmax()]
            ann = ds.coco.anns[int(rec.ann_ids[g])]
            probs = p["dists"][d].numpy()  # [4, R+1]
            stride = float(p["strides"][d])
            ent, top1, std = entropy(probs), probs.max(-1), dist_std(probs)
            for k, side in enumerate(SIDES):
                scale = sf[0] if k % 2 == 0 else sf[1]
                row = dict(image_id=rec.img_id, ann_id=int(rec.ann_ids[g]), label=int(rec.labels[g]), side=side,
                           entropy=float(ent[k]), top1=float(top1[k]), std_px=float(std[k] * stride / scale),
                           abs_err_px=float(abs(p["boxes"][d, k] - gts[g, k])), score=float(p["scores"][d]),
                           iou=float(iou[g, d]), gt_size=float(min(gts[g, 2] - gts[g, 0], gts[g, 3] - gts[g, 1])))
                for key, name in (("edge_ambiguity", "ambiguity"), ("edge_blur", "blur"),
                                  ("edge_occlusion", "occlusion")):
                    if key in ann:
                        row[name] = float(ann[key][k])
                rows.append(row)
    return pd.DataFrame(rows)


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation with the sample size (nan when undefined)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return dict(pearson=math.nan, spearman=math.nan, n=int(len(x)))
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return dict(pearson=float(np.corrcoef(x, y)[0, 1]), spearman=float(np.corrcoef(rx, ry)[0, 1]), n=int(len(x)))
