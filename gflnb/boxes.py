"""Box utilities: anchors, the Integral, distance coding, IoU and class-aware NMS.

Every box is ``xyxy`` in pixels (or in stride units where a docstring says so). The formulas
follow mmdetection 3.3 operation for operation, because the reference fixtures are compared
bit-closely and the order of floating-point operations matters for ties (ATSS, NMS).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import nms

# mmcv's batched_nms switches from the offset trick to a per-class loop at this many boxes.
NMS_SPLIT_THR = 10000


# --------------------------------------------------------------------------- Integral
def integral(logits: Tensor, reg_max: int = 16) -> Tensor:
    """Expected distance per side from distribution logits.

    ``logits [..., 4*(reg_max+1)]`` (side k, bin j at channel ``k*(reg_max+1)+j``; sides in
    the order left, top, right, bottom) -> ``[..., 4]`` distances in bins (stride units).
    """
    bins = reg_max + 1
    if logits.shape[-1] != 4 * bins:
        raise ValueError(f"integral: last dim must be 4*(reg_max+1)={4 * bins}, got {logits.shape[-1]}")
    lead = logits.shape[:-1]
    prob = logits.reshape(-1, bins).softmax(dim=1)  # [N*4, R+1]
    project = torch.linspace(0, reg_max, bins, dtype=prob.dtype, device=prob.device)
    # A product and a sum, not ``prob @ project``: on CPU a matrix-vector product goes to MKL's SGEMV,
    # which picks its code path by CPU vendor (MKL_CBWR cannot pin it on non-Intel CPUs), and was the
    # one term that differed between AMD and Intel at the first training step. ATen's own reduction
    # runs the capped AVX2 kernel everywhere (gflnb/numerics/portable.py).
    return (prob * project).sum(dim=1).reshape(*lead, 4)


# --------------------------------------------------------------------------- anchors
def grid_anchors(featmap_sizes: Sequence[Sequence[int]], strides: Sequence[int],
                 octave_base_scale: float = 8, device=None,
                 dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """One square anchor of side ``octave_base_scale*s`` per location, per level.

    The centre of location (x, y) is ``(x*s, y*s)`` (mmdet ``center_offset=0``: no half-stride
    shift). Returns ``[H*W, 4]`` per level, row-major (y outer, x inner).
    """
    out = []
    for (h, w), s in zip(featmap_sizes, strides):
        half = 0.5 * octave_base_scale * s
        base = torch.tensor([-half, -half, half, half], dtype=dtype, device=device)
        sx = torch.arange(0, int(w), device=device).to(dtype) * s  # [W]
        sy = torch.arange(0, int(h), device=device).to(dtype) * s  # [H]
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1)  # [H*W, 4]
        out.append(shifts + base)
    return out


def valid_flags(featmap_sizes: Sequence[Sequence[int]], strides: Sequence[int],
                pad_shape: Sequence[int], device=None) -> list[Tensor]:
    """Per level ``[H*W]`` bool: location inside the image's own padded size (H, W)."""
    out = []
    for (h, w), s in zip(featmap_sizes, strides):
        vh = min(int(math.ceil(pad_shape[0] / s)), int(h))
        vw = min(int(math.ceil(pad_shape[1] / s)), int(w))
        vx = torch.zeros(int(w), dtype=torch.bool, device=device)
        vy = torch.zeros(int(h), dtype=torch.bool, device=device)
        vx[:vw] = True
        vy[:vh] = True
        out.append((vy[:, None] & vx[None, :]).reshape(-1))
    return out


def anchor_centers(anchors: Tensor) -> Tensor:
    """``[N, 4]`` boxes -> ``[N, 2]`` centres."""
    return torch.stack([(anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2], dim=-1)


def featmap_sizes_for(image_hw: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """Feature-map sizes of an FPN with stride-2 3x3 convs: ``ceil(side / s)`` per level."""
    return [(int(math.ceil(image_hw[0] / s)), int(math.ceil(image_hw[1] / s))) for s in strides]


# --------------------------------------------------------------------------- distance coding
def distance2bbox(points: Tensor, distances: Tensor, max_shape: Optional[Sequence[int]] = None) -> Tensor:
    """``points [N, 2]`` + ``distances [N, 4]`` (l, t, r, b) -> boxes ``[N, 4]``.

    With ``max_shape=(H, W)``, x is clamped to [0, W] and y to [0, H].
    """
    x1 = points[..., 0] - distances[..., 0]
    y1 = points[..., 1] - distances[..., 1]
    x2 = points[..., 0] + distances[..., 2]
    y2 = points[..., 1] + distances[..., 3]
    if max_shape is not None:
        h, w = max_shape[0], max_shape[1]
        x1, x2 = x1.clamp(min=0, max=w), x2.clamp(min=0, max=w)
        y1, y2 = y1.clamp(min=0, max=h), y2.clamp(min=0, max=h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(points: Tensor, boxes: Tensor, max_dis: Optional[float] = None, eps: float = 0.1) -> Tensor:
    """Inverse of :func:`distance2bbox`; with ``max_dis`` clamps to ``[0, max_dis - eps]``."""
    left = points[..., 0] - boxes[..., 0]
    top = points[..., 1] - boxes[..., 1]
    right = boxes[..., 2] - points[..., 0]
    bottom = boxes[..., 3] - points[..., 1]
    if max_dis is not None:
        left = left.clamp(min=0, max=max_dis - eps)
        top = top.clamp(min=0, max=max_dis - eps)
        right = right.clamp(min=0, max=max_dis - eps)
        bottom = bottom.clamp(min=0, max=max_dis - eps)
    return torch.stack([left, top, right, bottom], dim=-1)


# --------------------------------------------------------------------------- IoU
def _area(b: Tensor) -> Tensor:
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def _overlap_union(a: Tensor, b: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Intersection area and union (clamped to >= eps) of aligned boxes, in mmdet's order of ops."""
    lt = torch.max(a[..., :2], b[..., :2])
    rb = torch.min(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = _area(a) + _area(b) - overlap
    return overlap, torch.max(union, union.new_tensor([eps]))


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of aligned pairs ``[..., 4]`` x ``[..., 4]`` -> ``[...]`` (union clamped to >= eps)."""
    overlap, union = _overlap_union(a, b, eps)
    return overlap / union


def box_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """Pairwise IoU ``[N, 4]`` x ``[M, 4]`` -> ``[N, M]`` (the form ATSS uses)."""
    return aligned_iou(a[:, None, :], b[None, :, :], eps)


def generalized_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """GIoU of aligned pairs; union and enclosing area are clamped to >= eps (mmdet form)."""
    overlap, union = _overlap_union(a, b, eps)
    ious = overlap / union
    enc_lt = torch.min(a[..., :2], b[..., :2])
    enc_rb = torch.max(a[..., 2:], b[..., 2:])
    enc_wh = (enc_rb - enc_lt).clamp(min=0)
    enclose = torch.max(enc_wh[..., 0] * enc_wh[..., 1], union.new_tensor([eps]))
    return ious - (enclose - union) / enclose


# --------------------------------------------------------------------------- NMS
def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS as mmcv does it; returns kept indices sorted by descending score.

    Below ``NMS_SPLIT_THR`` boxes, mmcv makes one NMS call on boxes shifted by
    ``label * (max_coord + 1)``. torchvision's ``batched_nms`` switches to a per-class loop at
    1,000 boxes on CPU, which rounds the IoUs differently for near-threshold pairs, so the
    offset trick is written out here to reproduce the published pipeline exactly.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if boxes.shape[0] < NMS_SPLIT_THR:
        offsets = labels.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for lab in torch.unique(labels):
        idx = (labels == lab).nonzero().view(-1)
        keep_mask[idx[nms(boxes[idx], scores[idx], iou_threshold)]] = True
    keep = keep_mask.nonzero().view(-1)
    return keep[scores[keep].argsort(descending=True)]


def scale_boxes(boxes: Tensor, scale_factor_wh: Sequence[float]) -> Tensor:
    """Multiply ``[N, 4]`` boxes by ``(w, h, w, h)``."""
    return boxes * boxes.new_tensor(list(scale_factor_wh)).repeat(2)
