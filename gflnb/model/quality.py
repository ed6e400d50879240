"""Quality representations (paper Table 1a; GFLv2's DGQP): how localisation quality enters the
detection score, what trains it, and how much each positive weighs in the box losses.

* ``none``: focal loss on one-hot labels; no quality; box-loss weight 1.
* ``centerness``: focal loss; a 3x3 conv on the reg tower trained with BCE against the
  centerness target (``loss_quality``); box-loss weight the centerness target (ATSSHead).
* ``iou``: focal loss; the same conv trained with BCE against the detached IoU; weight 1.
* ``centerness_guided`` / ``iou_guided`` (Table 1a's implicit rows): focal loss on one-hot labels,
  each positive anchor's term weighted by its centerness target / detached IoU; no branch, the
  class score alone at test time; box-loss weight as the separate branch of the same quality.
* ``qfl``: QFL on the joint class-IoU logit (GFL, the default); weight max_c sigmoid(cls).
* ``dgqp``: QFL on the product sigmoid(cls) x DGQP(box distribution) (GFLv2), computed from its
  log; weight max_c of that joint score, detached from the DGQP's parameters too (GFocalV2's
  ``cls_score.detach()``; ``dgqp_weight_grad=True`` keeps them in the graph, gflnb's collapse).

Every box-loss weight is detached and the head normalises by ``max(sum of weights, 1)``, which
for a weight of 1 is the number of positives. The classification normaliser is the head's (GFL's
``sum_img max(num_pos, 1)``) for every variant, so only the named component changes between them.

A branch's extra output travels as trailing channels of the head's ``bbox_preds`` (the detector
passes exactly two lists between ``forward``, ``loss`` and ``predict``). Parameters live under
``bbox_head.quality.*``; ``none`` and ``qfl`` have none, so the default state dict is mmdet's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine import dist
from ..numerics import pmath
from ..config import QUALITIES, ConfigError, HeadConfig
from ..losses import AVG_EPS, _QualityFocal, qfl_soft_target, quality_focal_loss_log, sigmoid_focal_loss


@dataclass
class Positives:
    """The positive anchors of a batch (P of them): what a quality component may read."""
    index: Tensor  # [P] int64 positions in the flattened [B*A] anchors
    cls: Tensor  # [P, C] class logits, in the graph
    reg: Tensor  # [P, box channels] box outputs, in the graph
    extra: Tensor  # [P, E] the quality branch's own outputs (E = 0 without a branch)
    points: Tensor  # [P, 2] anchor centres in pixels
    gt_boxes: Tensor  # [P, 4] assigned gt boxes in pixels
    iou: Tensor  # [P] IoU of the detached decoded prediction with its gt (no grad)


def centerness_target(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS/ATSS centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``: ``[P, 2]``, ``[P, 4]`` -> ``[P]``.

    Only for points strictly inside their box (ATSS positives are, by 0.01 px), else it is NaN
    or negative.
    """
    left = points[:, 0] - boxes[:, 0]
    top = points[:, 1] - boxes[:, 1]
    right = boxes[:, 2] - points[:, 0]
    bottom = boxes[:, 3] - points[:, 1]
    lr = torch.stack([left, right], dim=1)  # [P, 2]
    tb = torch.stack([top, bottom], dim=1)  # [P, 2]
    return pmath.sqrt((lr.min(dim=-1)[0] / lr.max(dim=-1)[0]) * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))


def dgqp_features(reg: Tensor, reg_max: int, topk: int = 4) -> Tensor:
    """GFLv2's distribution statistics: ``[N, 4(R+1)]`` logits -> ``[N, 4(topk+1)]``.

    Per side (left, top, right, bottom) the softmax over the R+1 bins, its ``topk`` largest
    probabilities in descending order and their mean; side k occupies columns ``k(topk+1) ...``.
    A sharp distribution has a large top-1, a flat one spreads its mass.
    """
    prob = reg.reshape(-1, 4, reg_max + 1).softmax(dim=2)  # [N, 4, R+1]
    top = prob.topk(topk, dim=2)[0]  # [N, 4, k]
    stat = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2)  # [N, 4, k+1]
    return stat.reshape(reg.shape[0], 4 * (topk + 1))


def _num_pos_avg(pos: Optional[Positives], like: Tensor) -> float:
    """ATSSHead's ``max(reduce_mean(num_pos), 1)`` for its centerness loss (called on every rank)."""
    n = like.new_tensor(float(0 if pos is None else pos.index.numel()))
    return max(float(dist.reduce_mean(n).item()), 1.0)


class Quality(nn.Module):
    """Base of the quality components; the subclasses below are the five ``quality`` values."""

    name = ""
    extra_channels = 0  # channels this component appends to each level's bbox_preds

    def branch(self, reg_feat: Tensor) -> Optional[Tensor]:
        """``[B, F, H, W]`` reg-tower features -> ``[B, E, H, W]`` extra outputs, or None."""
        return None

    def scores(self, cls: Tensor, reg: Tensor, extra: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Test time: ``(scores [N, C], factor [N] or None)``. ``scores`` are what score_thr and
        nms_pre see; a ``factor`` multiplies the kept pairs' scores before NMS (mmdet 3.x
        ``score_factors``)."""
        raise NotImplementedError

    def anchor_scores(self, cls: Tensor, reg: Tensor, extra: Tensor) -> tuple[Tensor, Optional[Tensor], Tensor]:
        """Per anchor, before any threshold: ``(class score [N], quality [N] or None, final [N])``.

        ``final`` is the max over classes of what ``GFLHead.predict`` ranks by in NMS (for a
        separate branch, the class score times the quality factor); ``quality`` is the factor,
        None where the score is the only output (``none``, and ``qfl``, whose score is the joint
        class-IoU estimate). The paper's Fig. 2 measurement (gflnb.chapters.analysis.anchor_scores).
        """
        scores, factor = self.scores(cls, reg, extra)  # the same numbers predict ranks
        best = scores.max(dim=1)[0]  # [N]
        if factor is None:
            return best, None, best
        # factor >= 0, so max_c(s_c * q) = q * max_c(s_c) exactly (rounding is monotone)
        return best, factor, best * factor

    def box_weight(self, pos: Positives) -> Tensor:
        """``[P]`` detached weights of the positives in the GIoU and DFL losses."""
        raise NotImplementedError

    def box_norm(self, weight_sum: float) -> float:
        """What the GIoU and DFL sums are divided by, given the weights' sum over the batch (and
        processes): mmdetection 3.3's ``max(sum, 1)``."""
        return max(weight_sum, 1.0)

    def loss(self, cls: Tensor, reg: Tensor, extra: Tensor, labels: Tensor, label_weights: Tensor,
             pos: Optional[Positives], avg_factor: float) -> dict[str, Tensor]:
        """``loss_cls`` (and ``loss_quality`` for a separate branch) over all ``N = B*A`` anchors.

        ``cls [N, C]`` logits, ``reg [N, box channels]``, ``extra [N, E]``, ``labels [N]`` (C =
        negative), ``label_weights [N]``; ``pos`` is None when the batch has no positive.
        """
        raise NotImplementedError


class FocalQuality(Quality):
    """``none``: RetinaNet/ATSS classification with focal loss on one-hot labels, no quality."""

    name = "none"

    def __init__(self, loss_cls_weight: float = 1.0, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.loss_cls_weight, self.alpha, self.gamma = loss_cls_weight, alpha, gamma

    def scores(self, cls: Tensor, reg: Tensor, extra: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        return cls.sigmoid(), None

    def box_weight(self, pos: Positives) -> Tensor:
        return pos.iou.new_ones(pos.iou.shape)

    def _loss_cls(self, cls: Tensor, labels: Tensor, label_weights: Tensor, avg_factor: float) -> Tensor:
        fl = sigmoid_focal_loss(cls, labels, self.alpha, self.gamma)  # [N]
        return self.loss_cls_weight * (fl * label_weights).sum() / (avg_factor + AVG_EPS)

    def loss(self, cls: Tensor, reg: Tensor, extra: Tensor, labels: Tensor, label_weights: Tensor,
             pos: Optional[Positives], avg_factor: float) -> dict[str, Tensor]:
        return dict(loss_cls=self._loss_cls(cls, labels, label_weights, avg_factor))


class SeparateQuality(FocalQuality):
    """A separate 1-channel quality logit on the reg tower, trained with BCE on positives only and
    multiplied into the class score at test time (ATSSHead's centerness arrangement)."""

    extra_channels = 1

    def __init__(self, feat_channels: int, loss_cls_weight: float = 1.0, alpha: float = 0.25, gamma: float = 2.0,
                 loss_quality_weight: float = 1.0):
        super().__init__(loss_cls_weight, alpha, gamma)
        self.loss_quality_weight = loss_quality_weight
        self.conv = nn.Conv2d(feat_channels, 1, 3, padding=1)

    def target(self, pos: Positives) -> Tensor:
        """``[P]`` BCE targets in [0, 1]."""
        raise NotImplementedError

    def branch(self, reg_feat: Tensor) -> Optional[Tensor]:
        return self.conv(reg_feat)

    def scores(self, cls: Tensor, reg: Tensor, extra: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        return cls.sigmoid(), extra[:, 0].sigmoid()

    def loss(self, cls: Tensor, reg: Tensor, extra: Tensor, labels: Tensor, label_weights: Tensor,
             pos: Optional[Positives], avg_factor: float) -> dict[str, Tensor]:
        num_pos = _num_pos_avg(pos, cls)
        if pos is None:
            loss_q = extra.sum() * 0  # keeps the branch in the graph (DDP needs every parameter used)
        else:
            bce = F.binary_cross_entropy_with_logits(pos.extra[:, 0], self.target(pos), reduction="none")  # [P]
            loss_q = self.loss_quality_weight * bce.sum() / (num_pos + AVG_EPS)
        return dict(loss_cls=self._loss_cls(cls, labels, label_weights, avg_factor), loss_quality=loss_q)


class CenternessTarget:
    """The centerness target (FCOS/ATSS), which also weights the box losses (ATSSHead)."""

    def target(self, pos: Positives) -> Tensor:
        """``[P]`` in (0, 1]."""
        return centerness_target(pos.points, pos.gt_boxes)

    def box_weight(self, pos: Positives) -> Tensor:
        return self.target(pos)


class IoUTarget:
    """The IoU of the detached decoded box with its gt.

    The box losses are not weighted by that IoU (weight 1, FocalQuality's): it is a function of the
    prediction itself and near 0 early on, which would starve the regression it measures.
    """

    def target(self, pos: Positives) -> Tensor:
        """``[P]`` in [0, 1], no gradient."""
        return pos.iou.detach()


class CenternessQuality(CenternessTarget, SeparateQuality):
    """``centerness``: ATSS as published; the centerness target also weights the box losses."""

    name = "centerness"


class IoUQuality(IoUTarget, SeparateQuality):
    """``iou``: the same branch predicting the IoU of the decoded box with its gt."""

    name = "iou"


class GuidedQuality(FocalQuality):
    """Implicit weighting (Table 1a's "guided" rows): no branch, the quality enters only as the weight
    of each positive anchor's focal-loss term (all its classes, as mmdet's per-anchor weight), so
    the class score is trained towards 1 harder where the box is good and scored alone at test time.
    Negatives keep weight 1; the normaliser is the head's, as for every variant.
    """

    def target(self, pos: Positives) -> Tensor:
        """``[P]`` the weights of the positives' classification terms."""
        raise NotImplementedError

    def loss(self, cls: Tensor, reg: Tensor, extra: Tensor, labels: Tensor, label_weights: Tensor,
             pos: Optional[Positives], avg_factor: float) -> dict[str, Tensor]:
        weights = label_weights  # [N]
        if pos is not None:
            weights = label_weights.clone()
            weights[pos.index] = label_weights[pos.index] * self.target(pos).detach().to(weights.dtype)
        return dict(loss_cls=self._loss_cls(cls, labels, weights, avg_factor))


class CenternessGuidedQuality(CenternessTarget, GuidedQuality):
    """``centerness_guided``: positives' focal loss weighted by the centerness target (and the box losses)."""

    name = "centerness_guided"


class IoUGuidedQuality(IoUTarget, GuidedQuality):
    """``iou_guided``: positives' focal loss weighted by the detached IoU; box-loss weight 1."""

    name = "iou_guided"


class QFLQuality(Quality):
    """``qfl``: GFL's joint class-IoU logit trained with Quality Focal Loss (the default)."""

    name = "qfl"

    def __init__(self, loss_cls_weight: float = 1.0, beta: float = 2.0):
        super().__init__()
        self.loss_cls_weight, self.beta = loss_cls_weight, beta

    def scores(self, cls: Tensor, reg: Tensor, extra: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        return cls.sigmoid(), None

    def box_weight(self, pos: Positives) -> Tensor:
        return pos.cls.detach().sigmoid().max(dim=1)[0]  # over ALL classes, not the gt class

    def loss(self, cls: Tensor, reg: Tensor, extra: Tensor, labels: Tensor, label_weights: Tensor,
             pos: Optional[Positives], avg_factor: float) -> dict[str, Tensor]:
        score = label_weights.new_zeros(cls.shape[0])  # [N] IoU targets, 0 for negatives
        if pos is not None:
            score[pos.index] = pos.iou
        target = qfl_soft_target(cls, labels, score)  # [N, C]
        qfl = _QualityFocal.apply(cls, target, float(self.beta)).sum(dim=1)  # [N]
        return dict(loss_cls=self.loss_cls_weight * (qfl * label_weights).sum() / (avg_factor + AVG_EPS))


class DGQPQuality(Quality):
    """``dgqp``: GFLv2's Distribution-Guided Quality Predictor.

    quality = sigmoid(conv1x1(relu(conv1x1(stats)))) from :func:`dgqp_features` of the box
    distribution; the joint score ``s = sigmoid(cls) * quality`` is trained with QFL on that product,
    computed from ``log s = logsigmoid(cls) + logsigmoid(DGQP logit)`` (:func:`quality_focal_loss_log`):
    GFocalV2's QFL on probabilities, without torch's BCE clamp that stops the gradient once ``s``
    is below about 1e-12.
    The distribution is not detached, so the quality loss also shapes it (as in GFocalV2).
    ``reg_conf`` keeps GFocalV2's layout: keys ``quality.reg_conf.{0,2}.{weight,bias}``.

    ``weight_grad``: whether the box-loss weights (the positives' joint scores) keep the DGQP's
    parameters in the graph. GFocalV2 detaches the whole joint score (False, the default). With
    True (gflnb before issue 18) the GIoU and DFL sums, divided by the weights' detached sum, are
    lowered by lowering every weight, so they push the quality logit down with a force of about
    ``loss_bbox + loss_dfl`` per step, ~1,800x QFL's pull at the first iteration of the demo:
    the quality, and with it every joint score, goes to 0 (experiments/dgqp/README.md).
    """

    name = "dgqp"

    def __init__(self, reg_max: int, topk: int = 4, channels: int = 64, loss_cls_weight: float = 1.0,
                 beta: float = 2.0, weight_grad: bool = False):
        super().__init__()
        self.reg_max, self.topk, self.loss_cls_weight, self.beta = reg_max, topk, loss_cls_weight, beta
        self.weight_grad = weight_grad
        self.reg_conf = nn.Sequential(nn.Conv2d(4 * (topk + 1), channels, 1), nn.ReLU(inplace=True),
                                      nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def quality_logit(self, reg: Tensor) -> Tensor:
        """``[N, 4(R+1)]`` distribution logits -> ``[N]`` the quality before its sigmoid."""
        stat = dgqp_features(reg, self.reg_max, self.topk)  # [N, 20]
        # The 1x1 convs as products on [N, 20]: the same parameters (and state-dict keys), but a conv
        # over N one-pixel images ran 3x slower than the rest of a training step. Not F.linear: MKL's
        # SGEMM picks its code path by CPU vendor (gflnb/numerics/portable.py); these are ATen's own kernels.
        c0, c1 = self.reg_conf[0], self.reg_conf[2]
        w0 = c0.weight.flatten(1)  # [channels, 20]
        hidden = c0.bias.expand(stat.shape[0], -1)
        for k in range(stat.shape[1]):  # elementwise products and sums, in a fixed order
            hidden = hidden + stat[:, k:k + 1] * w0[:, k]
        hidden = F.relu(hidden)  # [N, channels]
        return (hidden * c1.weight.flatten(1)).sum(dim=1) + c1.bias  # [N]

    def quality(self, reg: Tensor) -> Tensor:
        """``[N, 4(R+1)]`` distribution logits -> ``[N]`` quality in (0, 1)."""
        return torch.sigmoid(self.quality_logit(reg))

    def joint(self, cls: Tensor, reg: Tensor) -> Tensor:
        """``[N, C]`` joint score sigmoid(cls) * quality."""
        return cls.sigmoid() * self.quality(reg)[:, None]

    def scores(self, cls: Tensor, reg: Tensor, extra: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        return self.joint(cls, reg), None

    def anchor_scores(self, cls: Tensor, reg: Tensor, extra: Tensor) -> tuple[Tensor, Optional[Tensor], Tensor]:
        # the joint score factors into sigmoid(cls) and the DGQP quality, so both can be reported
        q = self.quality(reg)  # [N]
        best = cls.sigmoid().max(dim=1)[0]  # [N]
        return best, q, best * q

    def box_weight(self, pos: Positives) -> Tensor:
        if self.weight_grad:  # detached inputs, but the DGQP's parameters stay in the graph
            return self.joint(pos.cls.detach(), pos.reg.detach()).max(dim=1)[0]
        return self.joint(pos.cls.detach(), pos.reg.detach()).max(dim=1)[0].detach()  # GFocalV2's

    def box_norm(self, weight_sum: float) -> float:
        # GFocalV2 divides by the weights' sum itself. mmdetection's max(sum, 1) does not work here:
        # the joint score starts near 0.01 x 0.5 and the quality, shared by all classes, is pushed
        # down by every negative, so the sum falls below 1 and the box losses shrink with it.
        # GFocalV2's fallback to 1 below 1e-12 is dropped too: it turned box losses of a tiny but
        # nonzero weight sum into 1e-18 (issue 18's probes). 1 only where the sum is exactly 0,
        # where every weight, so every summand, is 0 as well.
        return weight_sum if weight_sum > 0 else 1.0

    def loss(self, cls: Tensor, reg: Tensor, extra: Tensor, labels: Tensor, label_weights: Tensor,
             pos: Optional[Positives], avg_factor: float) -> dict[str, Tensor]:
        score = label_weights.new_zeros(cls.shape[0])  # [N]
        if pos is not None:
            score[pos.index] = pos.iou
        log_joint = F.logsigmoid(cls) + F.logsigmoid(self.quality_logit(reg))[:, None]  # [N, C] log s
        qfl = quality_focal_loss_log(log_joint, labels, score, self.beta)  # [N]
        return dict(loss_cls=self.loss_cls_weight * (qfl * label_weights).sum() / (avg_factor + AVG_EPS))


_QUALITIES = {q.name: q for q in (FocalQuality, CenternessQuality, IoUQuality, CenternessGuidedQuality,
                                   IoUGuidedQuality, QFLQuality, DGQPQuality)}
assert tuple(sorted(_QUALITIES)) == tuple(sorted(QUALITIES)), "config.QUALITIES and the components disagree"


def build_quality(config: HeadConfig, feat_channels: int, reg_max: int) -> Quality:
    """The component named by the head's ``quality`` field, with the head's loss settings."""
    c, quality = config, config.quality
    if quality == "qfl":
        return QFLQuality(c.loss_cls_weight, c.qfl_beta)
    if quality in ("none", "centerness_guided", "iou_guided"):
        return _QUALITIES[quality](c.loss_cls_weight, c.focal_alpha, c.focal_gamma)
    if quality in ("centerness", "iou"):
        return _QUALITIES[quality](feat_channels, c.loss_cls_weight, c.focal_alpha, c.focal_gamma,
                                   c.loss_quality_weight)
    if quality == "dgqp":
        if c.dgqp_topk > reg_max + 1:
            raise ConfigError(f"quality 'dgqp' takes the top {c.dgqp_topk} of reg_max+1={reg_max + 1} bins")
        return DGQPQuality(reg_max, c.dgqp_topk, c.dgqp_channels, c.loss_cls_weight, c.qfl_beta, c.dgqp_weight_grad)
    raise ConfigError(f"quality must be one of {', '.join(map(repr, QUALITIES))}, got {quality!r}")
