"""COCO bbox evaluation with pycocotools: predictions mapped back to the original images."""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.coco import CocoDetection, make_loader

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class EvalResult:
    metrics: dict[str, float]  # AP, AP50, AP75, APs, APm, APl in percent
    per_class: dict[str, float]  # class name -> AP in percent (nan when the class has no gt)
    precision: Optional[np.ndarray] = None  # COCOeval's [T, R, K, A, M] precision array
    results: list[dict] = field(default_factory=list)  # the COCO results (detections)
    summary: str = ""  # what COCOeval printed

    def to_dict(self) -> dict[str, Any]:
        return dict(metrics=self.metrics, per_class=self.per_class)


def coco_result(image_id: int, category_id: int, box: Any, score: float) -> dict:
    """One detection as a COCO result: ``box`` xyxy in original pixels -> ``bbox [x, y, w, h]``, rounded
    as every results file gflnb writes (``gflnb evaluate``'s, ``gflnb predict``'s)."""
    x1, y1, x2, y2 = box  # float32: the width is taken in the boxes' own precision
    return dict(image_id=image_id, category_id=category_id,
                bbox=[round(float(x1), 3), round(float(y1), 3), round(float(x2 - x1), 3), round(float(y2 - y1), 3)],
                score=round(float(score), 5))


@torch.no_grad()
def predict_dataset(model: nn.Module, ds: CocoDetection, device: torch.device | str = "cpu", batch_size: int = 8,
                    progress: bool = True, fast: bool = True,
                    batches: Optional[list[list[int]]] = None) -> list[dict]:
    """Detections of every image as COCO results: ``{image_id, category_id, bbox [x, y, w, h], score}``.

    ``fast`` runs the model's inference path (``GFL.inference_net``: BN folded, NHWC on CPU);
    ``False`` runs the model as built. ``model`` is left in the mode it was in. Images run in
    consecutive batches of ``batch_size``, or in the given ``batches`` of dataset indices: a batch is
    padded to its largest image, and the padding reaches the detections' last bits.
    """
    was_training = model.training
    model.eval()
    if batches is None:
        batches = [list(range(i, min(i + batch_size, len(ds)))) for i in range(0, len(ds), batch_size)]
    results = []
    for images, _, metas in tqdm(make_loader(ds, batches), total=len(batches), desc="evaluate", unit="batch",
                                 disable=not progress, leave=False):
        dets = model.predict(images.to(device), metas, rescale=True, fast=fast)
        for det, meta in zip(dets, metas):
            b = det["boxes"].float().cpu().numpy()
            for box, s, lab in zip(b, det["scores"].cpu().tolist(), det["labels"].cpu().tolist()):
                results.append(coco_result(int(meta["img_id"]), int(ds.label2cat[lab]), box, s))
    model.train(was_training)
    return results


def coco_eval(ds: CocoDetection, results: list[dict]) -> EvalResult:
    """COCOeval (bbox) of ``results`` against the dataset's annotations."""
    from pycocotools.cocoeval import COCOeval
    if not results:
        return EvalResult({k: 0.0 for k in AP_NAMES}, {n: 0.0 for n in ds.class_names}, None, [], "no detections")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dt = ds.coco.loadRes(results)
        E = COCOeval(ds.coco, dt, "bbox")
        E.params.imgIds = sorted({r.img_id for r in ds.records})
        E.evaluate()
        E.accumulate()
        E.summarize()
    stats = [max(float(s), 0.0) * 100 for s in E.stats[:6]]
    precision = E.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for k, name in enumerate(ds.class_names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[name] = float(p.mean() * 100) if p.size else float("nan")
    return EvalResult(dict(zip(AP_NAMES, stats)), per_class, precision, results, buf.getvalue())


def evaluate_model(model: nn.Module, ds: CocoDetection, device: torch.device | str = "cpu", batch_size: int = 8,
                   out: Optional[str | os.PathLike] = None, progress: bool = True, fast: bool = True) -> EvalResult:
    results = predict_dataset(model, ds, device, batch_size, progress, fast)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results))
    return coco_eval(ds, results)


def format_table(res: EvalResult, title: str = "") -> str:
    """The AP table and per-class AP as fixed-width text."""
    lines = [title] if title else []
    lines.append("  ".join(f"{k:>6}" for k in AP_NAMES))
    lines.append("  ".join(f"{res.metrics[k]:6.1f}" for k in AP_NAMES))
    lines.append("per-class AP: " + ", ".join(f"{n} {v:.1f}" for n, v in res.per_class.items()))
    return "\n".join(lines)


def match_detections(ds: CocoDetection, results: list[dict], score_min: float = 0.0) -> dict[str, np.ndarray]:
    """For each detection, its best IoU with a gt of the same class (for score-vs-IoU calibration)."""
    from torchvision.ops import box_iou
    by_img: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score_min:
            by_img.setdefault(r["image_id"], []).append(r)
    rec = {r.img_id: r for r in ds.records}
    scores, ious = [], []
    for img_id, dets in by_img.items():
        g = rec.get(img_id)
        if g is None:
            continue
        db = torch.tensor([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                           for d in dets])
        dl = torch.tensor([ds.cat2label[d["category_id"]] for d in dets])
        if len(g.boxes):
            iou = box_iou(db, torch.from_numpy(g.boxes))
            iou[dl[:, None] != torch.from_numpy(g.labels)[None, :]] = 0
            best = iou.max(1).values
        else:
            best = torch.zeros(len(dets))
        scores += [d["score"] for d in dets]
        ious += best.tolist()
    return dict(score=np.asarray(scores), iou=np.asarray(ious))
