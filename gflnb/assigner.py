"""ATSS: Adaptive Training Sample Selection (Zhang et al. 2020), as GFL uses it.

Equal to mmdetection's ``ATSSAssigner(topk=9)`` index for index, but without its dense
anchors x gts IoU matrix: IoU is computed only for the <= topk*levels candidates of each gt.
The one anchors x gts matrix held at a time is a chunk of centre distances, needed for the
per-level top-k, and its width is capped so that memory stays flat in the number of gts.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .numerics import pmath
from .boxes import aligned_iou

# mmdet's -INF sentinel for the max_overlaps of anchors that are not positive.
NEG_INF = -100000000.0
# A positive's centre must lie this many pixels inside its gt (strict).
CENTER_MARGIN = 0.01
# Upper bound on the elements of one distance chunk (anchors x gts): 512K floats = 2 MB.
MAX_CHUNK_ELEMENTS = 1 << 19


def _candidates(anchor_pts: Tensor, gt_pts: Tensor, num_level_anchors: Sequence[int], topk: int) -> Tensor:
    """Per level, the ``min(topk, n_level)`` anchors nearest each gt centre -> ``[K, G]``."""
    # [G, A], gt-major so that each gt's top-k reads one contiguous row. mmdet writes
    # (a - g).pow(2).sum(-1).sqrt() over an [A, G, 2] tensor; (g - a)^2 equals (a - g)^2 and a sum
    # of two floats is one rounding either way, so the distances are bit-identical, ties included
    # (pmath.sqrt is IEEE's, as torch.sqrt is on Intel CPUs, without MKL's vendor-dependent VML).
    dx = gt_pts[:, 0, None] - anchor_pts[None, :, 0]
    dy = gt_pts[:, 1, None] - anchor_pts[None, :, 1]
    distances = pmath.sqrt(dx * dx + dy * dy)
    idxs, start = [], 0
    for n in num_level_anchors:
        k = min(topk, n)
        if k > 0:
            _, idx = distances[:, start:start + n].topk(k, dim=1, largest=False)
            idxs.append(idx.t() + start)
        start += n
    return torch.cat(idxs, dim=0)


@torch.no_grad()
def atss_assign(anchors: Tensor, num_level_anchors: Sequence[int], gt_boxes: Tensor, gt_labels: Tensor,
                topk: int = 9) -> tuple[Tensor, Tensor, Tensor]:
    """Assign anchors to gts.

    Args:
        anchors: ``[A, 4]`` anchor boxes, levels concatenated (valid anchors only).
        num_level_anchors: anchors per level, summing to A.
        gt_boxes: ``[G, 4]``; gt_labels: ``[G]`` int64.
    Returns:
        ``gt_inds [A]`` (0 negative, i+1 positive for gt i), ``labels [A]`` (-1 where not
        positive) and ``max_overlaps [A]`` (IoU with the assigned gt; -1e8 where not positive,
        all 0 when there is no gt).
    """
    num_anchors, num_gts = anchors.shape[0], gt_boxes.shape[0]
    if sum(num_level_anchors) != num_anchors:
        raise ValueError(f"atss_assign: num_level_anchors sums to {sum(num_level_anchors)}, "
                         f"but there are {num_anchors} anchors")
    device = anchors.device
    gt_inds = torch.zeros(num_anchors, dtype=torch.long, device=device)
    labels = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
    if num_gts == 0 or num_anchors == 0:
        return gt_inds, labels, anchors.new_zeros(num_anchors)
    gt_boxes = gt_boxes.to(anchors.dtype)

    anchor_pts = torch.stack([(anchors[:, 0] + anchors[:, 2]) / 2.0, (anchors[:, 1] + anchors[:, 3]) / 2.0], 1)
    gt_pts = torch.stack([(gt_boxes[:, 0] + gt_boxes[:, 2]) / 2.0, (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2.0], 1)

    chunk = max(1, MAX_CHUNK_ELEMENTS // max(num_anchors, 1))
    cand = torch.cat([_candidates(anchor_pts, gt_pts[g:g + chunk], num_level_anchors, topk)
                      for g in range(0, num_gts, chunk)], dim=1)  # [K, G]

    cand_iou = aligned_iou(anchors[cand], gt_boxes[None, :, :].expand(cand.shape[0], -1, -1))  # [K, G]
    thr = cand_iou.mean(0) + cand_iou.std(0)  # unbiased std, as torch.std
    is_pos = cand_iou >= thr[None, :]

    cx, cy = anchor_pts[cand, 0], anchor_pts[cand, 1]  # [K, G]
    inside = torch.stack([cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy],
                         dim=1).min(dim=1)[0] > CENTER_MARGIN
    is_pos &= inside

    # An anchor positive for several gts goes to the one of highest IoU, lowest gt index on ties.
    gt_of = torch.arange(num_gts, device=device).expand_as(cand)
    pos_anchor, pos_gt, pos_iou = cand[is_pos], gt_of[is_pos], cand_iou[is_pos]
    max_overlaps = anchors.new_full((num_anchors,), NEG_INF)
    if pos_anchor.numel():
        max_overlaps.scatter_reduce_(0, pos_anchor, pos_iou, reduce="amax")
        best = pos_iou == max_overlaps[pos_anchor]
        winner = torch.full((num_anchors,), num_gts, dtype=torch.long, device=device)
        winner.scatter_reduce_(0, pos_anchor[best], pos_gt[best], reduce="amin")
        assigned = winner < num_gts
        gt_inds[assigned] = winner[assigned] + 1
        labels[assigned] = gt_labels.to(device)[winner[assigned]]
    return gt_inds, labels, max_overlaps
