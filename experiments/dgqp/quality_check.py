"""What a trained DGQP predicts: its quality q on every anchor of the validation images, against the
IoU of that anchor's decoded box with its best gt (gflnb.chapters.analysis.anchor_scores, the path
GFL.predict runs). Prints one JSON line per checkpoint: q's quantiles on background (IoU < 0.3) and
positive-like (IoU >= 0.5) anchors, the ranking AUC of q alone between them, and the correlation of
q, of sigmoid(cls) and of the joint score with the IoU over the positive-like anchors.

    .venv/bin/python experiments/dgqp/quality_check.py experiments/dgqp/runs/dgqp__s0/latest.pth ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gflnb.chapters.analysis import _quantiles, _ranking_auc, anchor_scores, correlation, load_model
from gflnb.data.coco import CocoDetection
from gflnb.data.synth import dataset_paths

ROOT = Path(__file__).resolve().parents[2]


def check(checkpoint: Path, images: int) -> dict:
    model = load_model(checkpoint)
    ann, imgs = dataset_paths(ROOT / "data" / "synth_v2", "val")
    s = anchor_scores(model, CocoDetection(str(ann), str(imgs), model.cfg, train=False), max_images=images)
    q, cls, iou, score = (np.asarray(s[k], np.float64) for k in ("quality_score", "cls", "iou", "score"))
    bg, pos = iou < 0.3, iou >= 0.5
    r = {k: correlation(v[pos], iou[pos]) for k, v in (("q", q), ("cls", cls), ("joint", score))}
    return dict(checkpoint=str(checkpoint.relative_to(ROOT)) if checkpoint.is_relative_to(ROOT) else str(checkpoint),
                images=s["images"], anchors=int(len(q)), background=int(bg.sum()), positive_like=int(pos.sum()),
                q_background=_quantiles(q[bg]), q_positive=_quantiles(q[pos]),
                q_auc=_ranking_auc(q[pos], q[bg]), joint_auc=_ranking_auc(score[pos], score[bg]),
                **{f"r_{k}_iou": round(v["pearson"], 4) for k, v in r.items()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--images", type=int, default=200)
    a = ap.parse_args(argv)
    for c in a.checkpoints:
        print(json.dumps(check(c.resolve(), a.images)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
