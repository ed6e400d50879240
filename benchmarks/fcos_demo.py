"""The CPU demo's peer: torchvision's FCOS trained on the same data, for the same 5 minutes.

The FCOS detector, its head, target assignment, losses and post-processing are torchvision's own;
the backbone (ResNet-18 at reduced width) and FPN are gflnb's so that both detectors see the same
features, and the data, schedule shape (warmup, one lr drop at the same fraction of the budget),
optimizer, bf16 autocast (where the CPU has native bf16) and COCO evaluation are shared. By
default FCOS gets the recipe that did best for it in the issue's measurements: ResNet-18 width 8,
FPN 32, 3 levels, a 2-conv head, AdamW 2e-3.

    python benchmarks/fcos_demo.py --data data/synth --max-minutes 5 [--set base_channels=16 ...]
"""
from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from tqdm import tqdm

from gflnb.model.backbone import ResNet
from gflnb.config import get_config, parse_set
from gflnb.data.coco import CocoDetection, epoch_batches, make_loader
from gflnb.engine.evaluate import evaluate_model, format_table
from gflnb.model.neck import FPN
from gflnb.data.synth import dataset_paths
from gflnb.engine.train import cpu_has_native_bf16, lr_at

FCOS_RECIPE = dict(base_channels=8, in_channels=(8, 16, 32, 64), out_channels=32, feat_channels=32,
                   norm_num_groups=16, octave_base_scale=4)


class _Features(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.backbone = ResNet(cfg.depth, base_channels=cfg.base_channels, frozen_stages=-1, norm_eval=False)
        self.neck = FPN(cfg.in_channels, cfg.out_channels, cfg.num_outs, cfg.start_level)
        self.out_channels = cfg.out_channels

    def forward(self, x):
        return OrderedDict((str(i), f) for i, f in enumerate(self.neck(self.backbone(x))))


class FCOSPeer(nn.Module):
    """torchvision FCOS behind gflnb's ``loss`` / ``predict`` interface (images already normalized)."""

    def __init__(self, cfg):
        super().__init__()
        side = max(cfg.img_scale)
        sizes = tuple((s,) for s in cfg.strides)  # FCOS sizes its levels' ranges from these (4x, 8x)
        self.fcos = FCOS(_Features(cfg), num_classes=cfg.num_classes, min_size=side, max_size=side,
                         image_mean=[0.0] * 3, image_std=[1.0] * 3, score_thresh=cfg.score_thr,
                         nms_thresh=cfg.iou_threshold, detections_per_img=cfg.max_per_img, topk_candidates=1000,
                         anchor_generator=AnchorGenerator(sizes, ((1.0,),) * len(sizes)),
                         head=FCOSHead(cfg.out_channels, 1, cfg.num_classes, num_convs=cfg.stacked_convs))

    @staticmethod
    def _unpad(images, metas):
        return [im[:, :m["img_shape"][0], :m["img_shape"][1]] for im, m in zip(images, metas)]

    def loss(self, images, targets, metas):
        return self.fcos(self._unpad(images, metas), list(targets))

    @torch.no_grad()
    def predict(self, images, metas, rescale=False):
        out = self.fcos(self._unpad(images, metas))
        if rescale:
            for o, m in zip(out, metas):
                sx, sy = m["scale_factor"]
                o["boxes"] = o["boxes"] / o["boxes"].new_tensor([sx, sy, sx, sy])
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/synth"))
    ap.add_argument("--max-minutes", type=float, default=5.0)
    ap.add_argument("--epochs", type=int, default=40, help="an upper bound; the budget usually ends the run")
    ap.add_argument("--out", type=Path, default=Path("runs/fcos_demo"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    ov = dict(FCOS_RECIPE, epochs=a.epochs, milestones=(int(a.epochs * 0.9),))
    ov.update(dict(parse_set(s) for s in a.set))
    cfg = get_config("gfl_cpu_demo", **ov)
    train_ds = CocoDetection(*dataset_paths(a.data, "train"), cfg, train=True)
    val_ds = CocoDetection(*dataset_paths(a.data, "val"), cfg, train=False)
    torch.manual_seed(cfg.seed)
    model = FCOSPeer(cfg)
    base_lr = cfg.lr * cfg.batch_size / cfg.base_batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=cfg.weight_decay, fused=True)
    bf16 = cfg.cpu_amp and cpu_has_native_bf16()
    t0, it, stop = time.perf_counter(), 0, False
    for epoch in range(cfg.epochs):
        train_ds.set_epoch(epoch)
        model.train()
        batches = epoch_batches(train_ds.aspect_groups(), cfg.batch_size, cfg.seed, epoch)
        for images, targets, metas in tqdm(make_loader(train_ds, batches), total=len(batches), leave=False,
                                           desc=f"FCOS epoch {epoch + 1}"):
            frac = (time.perf_counter() - t0) / 60 / a.max_minutes
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, base_lr, epoch, it, frac)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as the demo trains
                losses = model.loss(images, targets, metas)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            it += 1
            if (time.perf_counter() - t0) / 60 >= a.max_minutes:
                stop = True
                break
        if stop:
            break
    minutes = (time.perf_counter() - t0) / 60
    a.out.mkdir(parents=True, exist_ok=True)
    res = evaluate_model(model, val_ds, "cpu", 8, a.out / "val_results.json")
    print(format_table(res, f"torchvision FCOS ({cfg.base_channels}-wide ResNet-18, FPN {cfg.out_channels}) "
                            f"after {it} iterations, {it * cfg.batch_size / len(train_ds):.1f} epochs, {minutes:.2f} min"))
    (a.out / "metrics.json").write_text(json.dumps(dict(res.to_dict(), iterations=it, train_minutes=minutes,
                                                        overrides={k: str(v) for k, v in ov.items()}), indent=1))


if __name__ == "__main__":
    main()
