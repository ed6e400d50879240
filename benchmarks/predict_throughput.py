"""Images per second of ``gflnb.Detector.detect`` (what ``gflnb predict`` runs per image: the reference's
resize/normalize/pad, the forward, decode, NMS and the per-side uncertainty), torch and ONNX
(onnxruntime), on the demo model and on the R-50 preset, from decoded 800x1333 images:

    .venv/bin/python benchmarks/predict_throughput.py [--images N] [--r50-images M] [--no-onnx] [--configs ...]

Random weights (``pretrained_backbone=False``) with the class bias lifted to -1 (sigmoid 0.27), so
that every level sends its full ``nms_pre`` candidates through the selection as a trained detector
on a busy picture would; image reading and drawing are not timed. Batches of up to 8 images (all one
size here, so they run together). One warm-up batch per backend first; then ``--rounds`` rounds
that alternate the backends (torch, onnxruntime, torch, ...), so that a disturbance of the two cores
falls on both alike; the median round is printed, with onnxruntime's rate as a ratio of torch's.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import gflnb  # noqa: F401  (first: the portable kernels are chosen before torch loads)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gflnb import build_model  # noqa: E402
from gflnb.engine.export import export_onnx  # noqa: E402
from gflnb.engine.predict import Detector  # noqa: E402
from gflnb.numerics.machine import describe  # noqa: E402

SHAPE = (800, 1333)


def _model(config: str):
    torch.manual_seed(0)
    model = build_model(config, pretrained_backbone=False)
    with torch.no_grad():
        model.bbox_head.gfl_cls.bias.fill_(-1.0)
    return model.eval()


def _rate(det: Detector, images: list[np.ndarray]) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = det.detect_bgr(images, [f"<image {i}>" for i in range(len(images))])
    wall = time.perf_counter() - t0
    return len(images) / wall, sum(len(d) for d in out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["gfl_cpu_demo", "gfl_r50_fpn_1x_coco"])
    p.add_argument("--images", type=int, default=16, help="images per row (demo)")
    p.add_argument("--r50-images", type=int, default=4, help="images per row for the R-50 preset")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per backend")
    p.add_argument("--no-onnx", action="store_true")
    a = p.parse_args(argv)
    print(f"machine: {describe()}", flush=True)
    rng = np.random.default_rng(0)
    for config in a.configs:
        n = a.r50_images if "r50" in config else a.images
        images = [rng.integers(0, 256, size=(*SHAPE, 3), dtype=np.uint8) for _ in range(n)]
        model = _model(config)
        rows = {"torch": Detector.from_model(model)}
        tmp = tempfile.TemporaryDirectory(prefix="gflnb-bench-")
        if not a.no_onnx:
            rows["onnxruntime"] = Detector(onnx=export_onnx(model, Path(tmp.name) / "m.onnx"))
        batch = min(a.batch, n)
        for det in rows.values():
            det.batch_size = batch
            det.detect_bgr(images[:batch], ["warm-up"] * batch)
        h, w = rows["torch"].detect_bgr(images[:1], ["size"])[0].image_size
        rates: dict[str, list[float]] = {b: [] for b in rows}
        n_det = {}
        for _ in range(a.rounds):
            for backend, det in rows.items():
                rate, n_det[backend] = _rate(det, images)
                rates[backend].append(rate)
        median = {b: float(np.median(r)) for b, r in rates.items()}
        cfg = model.cfg
        for backend in rows:
            ratio = f", {median[backend] / median['torch']:.2f}x torch" if backend != "torch" else ""
            print(f"{config} ({cfg.img_scale[0]}x{cfg.img_scale[1]} scale) on {h}x{w} images, {backend}, batch "
                  f"{batch}: {median[backend]:.2f} images/s{ratio} (median of {a.rounds} rounds of {n} images: "
                  f"{', '.join(f'{r:.2f}' for r in rates[backend])}; {n_det[backend]} detections)", flush=True)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
