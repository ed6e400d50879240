"""onnxruntime against GFL.predict on a trained checkpoint's validation images: detection counts and
the largest box and score differences.

    .venv/bin/python benchmarks/onnx_check.py CHECKPOINT ANN IMAGES [MAX_IMAGES]
"""
import sys
import tempfile
from pathlib import Path

import gflnb  # noqa: F401  (first: the portable kernels are chosen before torch loads)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gflnb.chapters.analysis import load_model  # noqa: E402
from gflnb.data.coco import Collate, CocoDetection  # noqa: E402
from gflnb.engine.export import OnnxDetector, export_onnx  # noqa: E402


def main() -> None:
    checkpoint, ann, images = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    model = load_model(checkpoint)
    ds = CocoDetection(ann, images, model.cfg, train=False)
    path = export_onnx(model, Path(tempfile.mkdtemp()) / "model.onnx")
    det = OnnxDetector(path)
    collate = Collate(model.cfg)
    counts, box_d, score_d, label_mismatch, unmatched = [0, 0], 0.0, 0.0, 0, 0
    with torch.no_grad():
        for i in range(min(n, len(ds))):
            x, _, metas = collate([ds[i]])
            a, b = model.predict(x, metas)[0], det.predict(x, metas)[0]
            counts[0] += len(a["scores"])
            counts[1] += len(b["scores"])
            k = min(len(a["scores"]), len(b["scores"]))
            label_mismatch += int((a["labels"][:k].numpy() != np.asarray(b["labels"][:k])).sum())
            if k:
                box_d = max(box_d, float(np.abs(a["boxes"][:k].numpy() - np.asarray(b["boxes"][:k])).max()))
                score_d = max(score_d, float(np.abs(a["scores"][:k].numpy() - np.asarray(b["scores"][:k])).max()))
            unmatched += _unmatched(a, b)
    print(f"{min(n, len(ds))} images: detections torch {counts[0]}, onnxruntime {counts[1]}; in the same order: "
          f"{label_mismatch} label mismatches, largest box difference {box_d:.2e} px, largest score difference "
          f"{score_d:.2e}; as sets (each torch detection matched to an onnxruntime one of the same label, box "
          f"within 1e-3 px and score within 1e-5): {unmatched} unmatched")


def _unmatched(a, b, box_atol: float = 1e-3, score_atol: float = 1e-5) -> int:
    """Detections of either side with no partner on the other: the order of equal scores may differ."""
    bb, bs, bl = (np.asarray(b[k]) for k in ("boxes", "scores", "labels"))
    free = np.ones(len(bs), bool)
    missed = 0
    for box, score, label in zip(a["boxes"].numpy(), a["scores"].numpy(), a["labels"].numpy()):
        ok = free & (bl == label) & (np.abs(bs - score) <= score_atol) & (np.abs(bb - box).max(1) <= box_atol)
        if ok.any():
            free[np.flatnonzero(ok)[0]] = False
        else:
            missed += 1
    return missed + int(free.sum())  # left over on either side


if __name__ == "__main__":
    main()
