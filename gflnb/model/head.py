"""GFLHead: QFL joint class-quality scores and DFL box distributions (mmdetection 3.3 semantics).

The paper's ablated variants are two components the head composes: a quality representation
(``quality``: gflnb/model/quality.py) and a box representation (``box``: gflnb/model/box_repr.py). The
defaults (``qfl``, ``dfl``) are GFL, operation for operation.

Shapes: B images, C classes, R = reg_max, A anchors of all levels concatenated (P3 first,
row-major within a level), one anchor per location. Per level, ``bbox_preds`` holds the box
coder's channels (``4(R+1)`` distribution logits, or 4 distances for ``dirac``) followed by the
quality branch's (1 logit for ``centerness``/``iou``, none otherwise).

Loss dict: always ``loss_cls``, ``loss_bbox``, ``loss_dfl`` (an exact zero that stays in the
graph for ``box`` 'integral'/'dirac'/'gaussian', so logs and plots keep one schema), then the box
coder's own terms (``loss_kl`` for 'gaussian'), then ``loss_quality`` for a separate
centerness/IoU branch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..engine import dist
from ..assigner import atss_assign
from .box_repr import build_box_coder
from ..boxes import aligned_iou, anchor_centers, batched_nms, distance2bbox, grid_anchors, scale_boxes, valid_flags
from ..config import ConfigError, GFLConfig, HeadConfig
from .layers import ConvModule, Scale
from ..losses import AVG_EPS, giou_loss
from .quality import Positives, build_quality

# Prior probability of the classification bias init (RetinaNet's pi = 0.01).
PRIOR_PROB = 0.01


class Integral(nn.Module):
    """Holds the persistent ``project`` buffer (0..R) under mmdetection's key,
    ``bbox_head.integral.project``; the read-out itself is :func:`gflnb.boxes.integral`."""

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))


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
    """Two GN towers, a joint class-quality conv and a distribution conv, shared by all levels.

    ``config`` holds the rest of the head's settings (:class:`gflnb.config.HeadConfig`; by default
    mmdetection's GFL), among them ``quality`` and ``box``, the paper's ablated variants (``GFLConfig``
    documents them): a separate quality branch adds ``quality.*`` keys, ``box='dirac'`` makes
    ``gfl_reg`` 4 channels wide and drops ``integral.project``. The defaults leave mmdetection's keys
    and numbers as they are. :meth:`from_config` builds the head of a ``GFLConfig``.
    """

    def __init__(self, num_classes: int, in_channels: int = 256, feat_channels: int = 256, stacked_convs: int = 4,
                 reg_max: int = 16, strides: Sequence[int] = (8, 16, 32, 64, 128), *,
                 config: Optional[HeadConfig] = None):
        super().__init__()
        c = self.config = HeadConfig() if config is None else config
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        self.octave_base_scale, self.topk, self.qfl_beta = c.octave_base_scale, c.topk, c.qfl_beta
        self.loss_weights = (c.loss_cls_weight, c.loss_bbox_weight, c.loss_dfl_weight)
        self.box_coder = build_box_coder(c.box, reg_max, c.bin_interval)  # a plain object: no state-dict keys
        if c.quality == "dgqp" and not self.box_coder.has_distribution:
            raise ConfigError(f"quality 'dgqp' reads the box distribution: it needs box 'integral' or 'dfl', "
                              f"not {c.box!r}")
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.cls_convs.append(ConvModule(chn, feat_channels, 3, padding=1, num_groups=c.norm_num_groups, act=True))
            self.reg_convs.append(ConvModule(chn, feat_channels, 3, padding=1, num_groups=c.norm_num_groups, act=True))
        self.gfl_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, self.box_coder.channels, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        # mmdet's persistent buffer, kept only where there is a distribution to integrate
        self.integral = Integral(reg_max) if self.box_coder.has_distribution else None
        # registered last, so the default (parameter-free) component changes no key and no init draw
        self.quality = build_quality(c, feat_channels, reg_max)
        self.box_channels = self.box_coder.channels
        self.reg_channels = self.box_channels + self.quality.extra_channels  # per anchor in bbox_preds
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: GFLConfig) -> "GFLHead":
        """The head of a GFL built from ``cfg`` (its input: the FPN's ``out_channels``)."""
        return cls(cfg.num_classes, cfg.out_channels, cfg.feat_channels, cfg.stacked_convs, cfg.reg_max, cfg.strides,
                   config=HeadConfig.from_config(cfg))

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
        """Per level: ``cls [B, C, H, W]`` logits, ``reg [B, 4(R+1), H, W]`` scaled distribution logits.

        (Variants: ``reg`` is ``[B, box channels + quality channels, H, W]``, the quality logit
        unscaled, as ATSSHead leaves its centerness.)
        """
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
            box = scale(self.gfl_reg(r)).float()
            extra = self.quality.branch(r)  # [B, E, H, W] or None
            bbox_preds.append(box if extra is None else torch.cat([box, extra.float()], dim=1))
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
        reg = torch.cat([r.permute(0, 2, 3, 1).reshape(B, -1, self.reg_channels) for r in bbox_preds], 1)
        return cls, reg  # [B, A, C], [B, A, box + quality channels]

    def loss(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
             targets: Sequence[Mapping[str, Tensor]], metas: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """``dict(loss_cls, loss_bbox, loss_dfl)``, each the sum over levels of mmdet's values
        (plus ``loss_quality`` for a separate quality branch)."""
        if len(targets) != cls_scores[0].shape[0] or len(metas) != cls_scores[0].shape[0]:
            raise ValueError(f"loss: {cls_scores[0].shape[0]} images but {len(targets)} targets and "
                             f"{len(metas)} metas")
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        tg = self.get_targets(featmap_sizes, targets, metas, device)
        cls, reg = self._flatten(cls_scores, bbox_preds)
        B, A, C = cls.shape
        cls, reg = cls.float().reshape(B * A, C), reg.float().reshape(B * A, -1)
        box_reg, extra = reg[:, :self.box_channels], reg[:, self.box_channels:]  # [BA, box], [BA, E]
        labels, label_weights = tg.labels.reshape(-1), tg.label_weights.reshape(-1)

        anchors = tg.anchors
        strides = torch.cat([anchors.new_full((n,), s) for n, s in zip(tg.num_level_anchors, self.strides)])
        avg_factor = dist.reduce_mean(torch.tensor(tg.num_pos_avg_factor, device=device)).item()

        pos = ((labels >= 0) & (labels < C)).nonzero().view(-1)
        _, w_bbox, w_dfl = self.loss_weights
        positives: Optional[Positives] = None
        if pos.numel() > 0:
            a_idx = pos % A
            stride = strides[a_idx][:, None]
            points = anchor_centers(anchors[a_idx])  # [P, 2] pixels
            ctr = points / stride  # [P, 2] stride units
            pos_reg = box_reg[pos]  # [P, box channels]
            gt_px = tg.bbox_targets.reshape(-1, 4)[pos]  # [P, 4] pixels
            gt_box = gt_px / stride
            pred_box = distance2bbox(ctr, self.box_coder.decode(pos_reg))  # [P, 4] stride units
            positives = Positives(index=pos, cls=cls[pos], reg=pos_reg, extra=extra[pos], points=points,
                                  gt_boxes=gt_px, iou=aligned_iou(pred_box.detach(), gt_box))
            weight = self.quality.box_weight(positives)  # [P], detached
            loss_bbox = w_bbox * (giou_loss(pred_box, gt_box) * weight).sum() / (1.0 + AVG_EPS)
            loss_dfl = self.box_coder.dfl_loss(pos_reg, ctr, gt_box, weight, w_dfl)
            # the coder's own terms (Gaussian: KL) weigh as DFL does: loss_dfl_weight, the same weights
            box_extra = self.box_coder.extra_losses(pos_reg, ctr, gt_box, weight, w_dfl)
            weight_sum = weight.sum()
        else:
            loss_bbox = box_reg.sum() * 0
            loss_dfl = box_reg.sum() * 0
            box_extra = {k: box_reg.sum() * 0 for k in self.box_coder.extra_loss_names}
            weight_sum = reg.new_tensor(0.0)

        cls_losses = self.quality.loss(cls, box_reg, extra, labels, label_weights, positives, avg_factor)
        norm = self.quality.box_norm(dist.reduce_mean(weight_sum.detach()).item())
        out = dict(loss_cls=cls_losses.pop("loss_cls"), loss_bbox=loss_bbox / norm, loss_dfl=loss_dfl / norm)
        out.update({k: v / norm for k, v in box_extra.items()})  # nothing for the reference's coders
        out.update(cls_losses)  # loss_quality of a separate branch
        return out

    # ------------------------------------------------------------------ inference
    def _image_levels(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
                      metas: Sequence[Mapping[str, Any]]):
        """Per image ``(img_shape, levels)``; each level ``(cls [HW, C], box [HW, box channels],
        extra [HW, E], anchors [HW, 4], stride)``: what predict and anchor_scores both walk."""
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        level_anchors = self.anchors(featmap_sizes, cls_scores[0].device)
        for i, meta in enumerate(metas):
            levels = []
            for cls, reg, anchors, s in zip(cls_scores, bbox_preds, level_anchors, self.strides):
                cls_l = cls[i].permute(1, 2, 0).reshape(-1, self.num_classes)  # [HW, C]
                reg_l = reg[i].permute(1, 2, 0).reshape(-1, self.reg_channels)  # [HW, box + E]
                levels.append((cls_l, reg_l[:, :self.box_channels], reg_l[:, self.box_channels:], anchors, s))
            yield _meta(meta, "img_shape", i), levels

    @torch.no_grad()
    def anchor_scores(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
                      metas: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        """Every anchor of every level, before score_thr, nms_pre and NMS (the paper's Fig. 2).

        Per image ``dict(boxes [A, 4], points [A, 2], level [A], cls [A], score [A])`` and
        ``quality [A]`` where the quality component has a factor (``Quality.anchor_scores``):
        boxes decoded and clamped to ``img_shape`` as ``predict`` does, in the resized image's
        pixels; ``score`` is the max over classes of the score ``predict`` ranks by in NMS.
        """
        device = cls_scores[0].device
        out = []
        for img_shape, levels in self._image_levels(cls_scores, bbox_preds, metas):
            parts: dict[str, list[Tensor]] = {k: [] for k in ("boxes", "points", "level", "cls", "quality", "score")}
            for lvl, (cls_l, box_l, extra_l, anchors, s) in enumerate(levels):
                cls_l = cls_l.float()
                c, q, f = self.quality.anchor_scores(cls_l, box_l, extra_l)  # [HW], [HW] or None, [HW]
                points = anchor_centers(anchors)  # [HW, 2]
                parts["boxes"].append(distance2bbox(points, self.box_coder.decode(box_l) * s, max_shape=img_shape))
                parts["points"].append(points)
                parts["level"].append(torch.full((points.shape[0],), lvl, dtype=torch.long, device=device))
                parts["cls"].append(c)
                parts["score"].append(f)
                if q is not None:
                    parts["quality"].append(q)
            out.append({k: torch.cat(v) for k, v in parts.items() if v})
        return out

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

        The score is the quality component's: the joint score (``qfl``, ``dgqp``: sigmoid(cls) x
        DGQP), the class score (``none``), or, for a separate branch, the class score for the
        threshold and nms_pre, multiplied by sigmoid(quality) before NMS (mmdet 3.x score_factors).
        """
        if with_dist and not self.box_coder.has_distribution:
            raise ValueError(f"with_dist=True needs a box distribution; box {self.box_coder.name!r} has none")
        device = cls_scores[0].device
        results = []
        for i, (img_shape, levels) in enumerate(self._image_levels(cls_scores, bbox_preds, metas)):
            meta = metas[i]
            boxes_l, scores_l, labels_l, dists_l, strides_l = [], [], [], [], []
            for cls_l, box_l, extra_l, anchors, s in levels:
                scores, factor = self.quality.scores(cls_l, box_l, extra_l)  # [HW, C], [HW] or None
                keep = scores > score_thr
                cand = scores[keep]
                pairs = keep.nonzero()  # [K, 2]: (anchor, class)
                cand, order = cand.sort(descending=True)
                n = min(nms_pre, cand.numel())
                a_idx, labels = pairs[order[:n]].unbind(dim=1)
                logits = box_l[a_idx]
                dists = self.box_coder.decode(logits) * s
                boxes_l.append(distance2bbox(anchor_centers(anchors[a_idx]), dists, max_shape=img_shape))
                scores_l.append(cand[:n] if factor is None else cand[:n] * factor[a_idx])
                labels_l.append(labels)
                if with_dist:
                    dists_l.append(self.box_coder.distribution(logits))
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
