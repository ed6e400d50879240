"""GFLHead: QFL joint class-quality scores and DFL box distributions (mmdetection 3.3 semantics).

Shapes: B images, C classes, R = reg_max, A anchors of all levels concatenated (P3 first,
row-major within a level), one anchor per location.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from . import dist
from .assigner import atss_assign
from .boxes import (aligned_iou, anchor_centers, batched_nms, bbox2distance, distance2bbox, grid_anchors,
                    integral, scale_boxes, valid_flags)
from .layers import ConvModule, Scale
from .losses import AVG_EPS, _QualityFocal, distribution_focal_loss, giou_loss, qfl_soft_target

# Prior probability of the classification bias init (RetinaNet's pi = 0.01).
PRIOR_PROB = 0.01


class Integral(nn.Module):
    """Distribution logits -> expected distance; holds the persistent ``project`` buffer (0..R)."""

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x: Tensor) -> Tensor:
        return integral(x, self.reg_max)


@dataclass
class HeadTargets:
    """Per-anchor training targets of a batch (levels concatenated)."""
    labels: Tensor  # [B, A] int64, C for negatives and invalid anchors
    label_weights: Tensor  # [B, A] float, 0 for anchors outside the image's pad_shape
    bbox_targets: Tensor  # [B, A, 4] gt boxes in pixels for positives, 0 elsewhere
    valid_flags: list[Tensor]  # per image [A] bool
    num_pos_avg_factor: float  # sum over images of max(num_pos, 1)
    num_level_anchors: list[int]
    anchors: Tensor  # [A, 4] anchor boxes, levels concatenated

    def per_level(self, name: str) -> list[Tensor]:
        """Split ``labels``/``label_weights``/``bbox_targets`` into per-level ``[B, N_l, ...]``."""
        return list(getattr(self, name).split(self.num_level_anchors, dim=1))


def _meta(meta: Mapping[str, Any], key: str, i: int) -> Any:
    try:
        return meta[key]
    except (KeyError, TypeError):
        raise KeyError(f"image meta {i} lacks {key!r} (each needs img_shape, pad_shape and scale_factor)") from None


class GFLHead(nn.Module):
    """Two GN towers, a joint class-quality conv and a distribution conv, shared by all levels."""

    def __init__(self, num_classes: int, in_channels: int = 256, feat_channels: int = 256, stacked_convs: int = 4,
                 reg_max: int = 16, strides: Sequence[int] = (8, 16, 32, 64, 128), norm_num_groups: int = 32,
                 octave_base_scale: int = 8, topk: int = 9, qfl_beta: float = 2.0, loss_cls_weight: float = 1.0,
                 loss_bbox_weight: float = 2.0, loss_dfl_weight: float = 0.25):
        super().__init__()
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        self.octave_base_scale, self.topk, self.qfl_beta = octave_base_scale, topk, qfl_beta
        self.loss_weights = (loss_cls_weight, loss_bbox_weight, loss_dfl_weight)
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.cls_convs.append(ConvModule(chn, feat_channels, 3, padding=1, num_groups=norm_num_groups, act=True))
            self.reg_convs.append(ConvModule(chn, feat_channels, 3, padding=1, num_groups=norm_num_groups, act=True))
        self.gfl_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.integral = Integral(reg_max)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.gfl_cls.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))

    # ------------------------------------------------------------------ forward
    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: ``cls [B, C, H, W]`` logits, ``reg [B, 4(R+1), H, W]`` scaled distribution logits."""
        if len(feats) != len(self.strides):
            raise ValueError(f"GFLHead has {len(self.strides)} levels but got {len(feats)} feature maps")
        cls_scores, bbox_preds = [], []
        for x, scale in zip(feats, self.scales):
            c, r = x, x
            for conv in self.cls_convs:
                c = conv(c)
            for conv in self.reg_convs:
                r = conv(r)
            cls_scores.append(self.gfl_cls(c))
            bbox_preds.append(scale(self.gfl_reg(r)).float())
        return cls_scores, bbox_preds

    # ------------------------------------------------------------------ anchors and targets
    def anchors(self, featmap_sizes: Sequence[Sequence[int]], device=None) -> list[Tensor]:
        return grid_anchors(featmap_sizes, self.strides, self.octave_base_scale, device=device)

    @torch.no_grad()
    def get_targets(self, featmap_sizes: Sequence[Sequence[int]], targets: Sequence[Mapping[str, Tensor]],
                    metas: Sequence[Mapping[str, Any]], device=None) -> HeadTargets:
        """ATSS targets per image, on the anchors inside each image's own ``pad_shape``."""
        level_anchors = self.anchors(featmap_sizes, device)
        num_level = [a.shape[0] for a in level_anchors]
        anchors = torch.cat(level_anchors)  # [A, 4]
        A, C = anchors.shape[0], self.num_classes
        labels = torch.full((len(targets), A), C, dtype=torch.long, device=device)
        weights = torch.zeros(len(targets), A, device=device)
        boxes_t = torch.zeros(len(targets), A, 4, device=device)
        flags, avg_factor = [], 0
        for i, (tgt, meta) in enumerate(zip(targets, metas)):
            vf_levels = valid_flags(featmap_sizes, self.strides, _meta(meta, "pad_shape", i), device)
            vf = torch.cat(vf_levels)
            valid_idx = vf.nonzero().view(-1)
            gt_boxes = tgt["boxes"].to(device=device, dtype=anchors.dtype).reshape(-1, 4)
            gt_labels = tgt["labels"].to(device=device, dtype=torch.long).reshape(-1)
            gt_inds, gt_lab, _ = atss_assign(anchors[valid_idx], [int(v.sum()) for v in vf_levels],
                                             gt_boxes, gt_labels, self.topk)
            pos = (gt_inds > 0).nonzero().view(-1)
            labels[i, valid_idx[pos]] = gt_lab[pos]
            weights[i, valid_idx] = 1.0
            boxes_t[i, valid_idx[pos]] = gt_boxes[gt_inds[pos] - 1]
            flags.append(vf)
            avg_factor += max(int(pos.numel()), 1)
        return HeadTargets(labels, weights, boxes_t, flags, float(avg_factor), num_level, anchors)

    # ------------------------------------------------------------------ loss
    def _flatten(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        B = cls_scores[0].shape[0]
        cls = torch.cat([c.permute(0, 2, 3, 1).reshape(B, -1, self.num_classes) for c in cls_scores], 1)
        reg = torch.cat([r.permute(0, 2, 3, 1).reshape(B, -1, 4 * (self.reg_max + 1)) for r in bbox_preds], 1)
        return cls, reg  # [B, A, C], [B, A, 4(R+1)]

    def loss(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
             targets: Sequence[Mapping[str, Tensor]], metas: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """``dict(loss_cls, loss_bbox, loss_dfl)``, each the sum over levels of mmdet's values."""
        if len(targets) != cls_scores[0].shape[0] or len(metas) != cls_scores[0].shape[0]:
            raise ValueError(f"loss: {cls_scores[0].shape[0]} images but {len(targets)} targets and "
                             f"{len(metas)} metas")
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        tg = self.get_targets(featmap_sizes, targets, metas, device)
        cls, reg = self._flatten(cls_scores, bbox_preds)
        B, A, C = cls.shape
        cls, reg = cls.float().reshape(B * A, C), reg.float().reshape(B * A, -1)
        labels, label_weights = tg.labels.reshape(-1), tg.label_weights.reshape(-1)

        anchors = tg.anchors
        strides = torch.cat([anchors.new_full((n,), s) for n, s in zip(tg.num_level_anchors, self.strides)])
        avg_factor = dist.reduce_mean(torch.tensor(tg.num_pos_avg_factor, device=device)).item()

        pos = ((labels >= 0) & (labels < C)).nonzero().view(-1)
        score = label_weights.new_zeros(B * A)
        w_cls, w_bbox, w_dfl = self.loss_weights
        if pos.numel() > 0:
            a_idx = pos % A
            stride = strides[a_idx][:, None]
            ctr = anchor_centers(anchors[a_idx]) / stride  # [P, 2] stride units
            pos_reg = reg[pos]  # [P, 4(R+1)]
            weight = cls[pos].detach().sigmoid().max(dim=1)[0]  # [P], max over all classes
            pred_box = distance2bbox(ctr, integral(pos_reg, self.reg_max))
            gt_box = tg.bbox_targets.reshape(-1, 4)[pos] / stride
            score[pos] = aligned_iou(pred_box.detach(), gt_box)
            loss_bbox = w_bbox * (giou_loss(pred_box, gt_box) * weight).sum() / (1.0 + AVG_EPS)
            dfl_target = bbox2distance(ctr, gt_box, self.reg_max, eps=0.1).reshape(-1)
            dfl = distribution_focal_loss(pos_reg.reshape(-1, self.reg_max + 1), dfl_target)
            loss_dfl = w_dfl * (dfl * weight.repeat_interleave(4)).sum() / (4.0 + AVG_EPS)
            weight_sum = weight.sum()
        else:
            loss_bbox = reg.sum() * 0
            loss_dfl = reg.sum() * 0
            weight_sum = reg.new_tensor(0.0)

        target = qfl_soft_target(cls, labels, score)
        qfl = _QualityFocal.apply(cls, target, float(self.qfl_beta)).sum(dim=1)
        loss_cls = w_cls * (qfl * label_weights).sum() / (avg_factor + AVG_EPS)

        norm = dist.reduce_mean(weight_sum.detach()).clamp(min=1).item()
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox / norm, loss_dfl=loss_dfl / norm)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], metas: Sequence[Mapping[str, Any]],
                rescale: bool = False, score_thr: float = 0.05, nms_pre: int = 1000, iou_threshold: float = 0.6,
                max_per_img: int = 100, min_bbox_size: float = 0, with_nms: bool = True,
                with_dist: bool = False) -> list[dict[str, Tensor]]:
        """Detections per image: ``dict(boxes [K, 4], scores [K], labels [K])``, by descending score.

        mmdet 3.x filtering: per level, the (anchor, class) pairs scoring > ``score_thr``, the
        best ``nms_pre`` pairs, decoded from anchor centres and clamped to ``img_shape``; then
        optional rescale to the original image, the w>min and h>min filter, class-aware NMS and
        the first ``max_per_img``. ``with_dist=True`` adds ``dists [K, 4, R+1]``: each detection's
        per-side bin probabilities (left, top, right, bottom), and ``strides [K]``.
        """
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        level_anchors = self.anchors(featmap_sizes, device)
        results = []
        for i, meta in enumerate(metas):
            img_shape = _meta(meta, "img_shape", i)
            boxes_l, scores_l, labels_l, dists_l, strides_l = [], [], [], [], []
            for cls, reg, anchors, s in zip(cls_scores, bbox_preds, level_anchors, self.strides):
                scores = cls[i].permute(1, 2, 0).reshape(-1, self.num_classes).sigmoid()  # [HW, C]
                keep = scores > score_thr
                cand = scores[keep]
                pairs = keep.nonzero()  # [K, 2]: (anchor, class)
                cand, order = cand.sort(descending=True)
                n = min(nms_pre, cand.numel())
                a_idx, labels = pairs[order[:n]].unbind(dim=1)
                logits = reg[i].permute(1, 2, 0).reshape(-1, 4 * (self.reg_max + 1))[a_idx]
                dists = integral(logits, self.reg_max) * s
                boxes_l.append(distance2bbox(anchor_centers(anchors[a_idx]), dists, max_shape=img_shape))
                scores_l.append(cand[:n])
                labels_l.append(labels)
                if with_dist:
                    dists_l.append(logits.reshape(-1, 4, self.reg_max + 1).softmax(-1))
                    strides_l.append(torch.full((n,), s, device=device))
            boxes, scores, labels = torch.cat(boxes_l), torch.cat(scores_l), torch.cat(labels_l)
            extra = dict(dists=torch.cat(dists_l), strides=torch.cat(strides_l)) if with_dist else {}
            if rescale:
                sw, sh = _meta(meta, "scale_factor", i)[:2]
                boxes = scale_boxes(boxes, (1 / sw, 1 / sh))
            if min_bbox_size >= 0:
                ok = ((boxes[:, 2] - boxes[:, 0]) > min_bbox_size) & ((boxes[:, 3] - boxes[:, 1]) > min_bbox_size)
                boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
                extra = {k: v[ok] for k, v in extra.items()}
            if with_nms and boxes.numel() > 0:
                keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_per_img]
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
                extra = {k: v[keep] for k, v in extra.items()}
            results.append(dict(boxes=boxes, scores=scores, labels=labels, **extra))
        return results
