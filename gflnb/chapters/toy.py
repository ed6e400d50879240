"""A toy for chapter 1: does the score of a detector track the localisation quality (IoU)?

Samples stand for anchors: positives carry a class and the IoU of their box; negatives are
background. Features are noisy functions of the class and of the IoU, so a model can in
principle recover both. Three heads are trained on the same features:

* ``focal``: class logits trained with focal loss on one-hot targets (no notion of quality);
* ``separate``: the same plus an IoU branch trained with BCE on positives only, score =
  class probability x predicted IoU (FCOS/ATSS-style, the "separate representation");
* ``qfl``: class logits trained with QFL on the soft target IoU (GFL's joint representation).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..losses import quality_focal_loss


def make_toy_anchors(n: int = 6000, num_classes: int = 4, dim: int = 16, pos_frac: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, generator=g) < pos_frac
    labels = torch.where(pos, torch.randint(0, num_classes, (n,), generator=g), torch.full((n,), num_classes))
    iou = torch.where(pos, 0.3 + 0.7 * torch.rand(n, generator=g), 0.4 * torch.rand(n, generator=g))
    cls_code = torch.randn(num_classes + 1, dim, generator=g)
    qual_dir = torch.randn(dim, generator=g)
    x = cls_code[labels] + 2.0 * (iou[:, None] - 0.5) * qual_dir + 0.8 * torch.randn(n, dim, generator=g)
    return dict(x=x, labels=labels, iou=iou, num_classes=num_classes)


def _mlp(dim: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, out))


def train_toy(kind: str, data: dict, steps: int = 400, lr: float = 1e-2, seed: int = 0):
    """Train one head; returns ``(iou, score, positive)`` per sample (score at its class; background: max)."""
    torch.manual_seed(seed)
    x, labels, iou, C = data["x"], data["labels"], data["iou"], data["num_classes"]
    cls = _mlp(x.shape[1], C)
    qual = _mlp(x.shape[1], 1) if kind == "separate" else None
    params = list(cls.parameters()) + (list(qual.parameters()) if qual is not None else [])
    opt = torch.optim.Adam(params, lr=lr)
    pos = labels < C
    onehot = F.one_hot(labels, C + 1)[:, :C].float()
    for _ in range(steps):
        logits = cls(x)
        if kind == "qfl":
            loss = quality_focal_loss(logits, labels, iou).mean()
        else:
            p = logits.sigmoid()
            ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
            pt = torch.where(onehot > 0, p, 1 - p)
            loss = (ce * (1 - pt) ** 2).sum(1).mean()
            if qual is not None:
                q = qual(x[pos]).squeeze(1)
                loss = loss + F.binary_cross_entropy_with_logits(q, iou[pos])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = cls(x).sigmoid()
        if qual is not None:
            p = p * qual(x).sigmoid()
        score = torch.where(pos, p.gather(1, labels.clamp(max=C - 1)[:, None]).squeeze(1), p.max(1).values)
    return iou.numpy(), score.numpy(), pos.numpy()


def compare(steps: int = 400, seed: int = 0, n: int = 4000) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    data = make_toy_anchors(n=n, seed=seed)
    names = {"focal": "focal loss (class only)", "separate": "focal + separate IoU branch", "qfl": "QFL (joint)"}
    return {names[k]: train_toy(k, data, steps, seed=seed) for k in ("focal", "separate", "qfl")}
