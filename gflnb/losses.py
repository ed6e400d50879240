"""Quality Focal Loss, Distribution Focal Loss and the GIoU loss (GFL, Li et al. 2020), plus the
focal loss, QFL on probabilities (and on their logs) and the Gaussian KL loss that the paper's
ablated variants use.

Per-sample functions return unreduced losses that stay in the autograd graph; ``reduce_loss``
applies mmdetection's weight / avg_factor reduction (``sum(loss * weight) / (avg_factor + eps)``
with eps the float32 machine epsilon, whatever the dtype).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .numerics import pmath
from .boxes import generalized_iou

# mmdet divides by (avg_factor + float32 eps) regardless of the loss dtype.
AVG_EPS = torch.finfo(torch.float32).eps


class _QualityFocal(torch.autograd.Function):
    """QFL with a hand-written backward that reads each element once.

    With ``t`` the soft target (IoU score at the gt class of a positive, 0 elsewhere) and
    ``p = sigmoid(x)``, the per-element loss is ``BCE(x, t) * |t - p|^beta``: for ``t = 0`` this
    is the negative term ``BCE(x, 0) * p^beta``. Its derivative, with ``d = p - t``::

        dL/dx = d * |d|^beta + BCE(x, t) * beta * |d|^(beta-1) * sign(d) * p * (1 - p)

    Autograd through the plain expression stores six [N, C] intermediates; this stores the
    inputs only and recomputes.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, beta: float) -> Tensor:
        ctx.save_for_backward(logits, target)
        ctx.beta = beta
        p = logits.sigmoid()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return bce * (p - target).abs().pow(beta)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, target = ctx.saved_tensors
        beta = ctx.beta
        p = logits.sigmoid()
        d = p - target
        ad = d.abs()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if beta == 2.0:  # the paper's setting: |d|^2 and 2|d|sign(d) = 2d, no pow needed
            grad = d * d * d + bce * 2.0 * d * p * (1 - p)
        elif beta == 0.0:  # plain BCE on the soft target (Table 1c's beta=0); the modulator is constant
            grad = d
        else:
            # |d|^(beta-1) is infinite at d = 0 for beta < 1, where sign(d) = 0: the term is 0 there.
            mod = torch.where(ad > 0, ad.pow(beta - 1) * torch.sign(d), torch.zeros_like(d))
            grad = d * ad.pow(beta) + bce * beta * mod * p * (1 - p)
        return grad * grad_out, None, None


def qfl_soft_target(logits: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
    """``[N, C]`` target: ``scores[i]`` at ``(i, labels[i])`` for positives (label < C), else 0."""
    num_classes = logits.shape[1]
    target = torch.zeros_like(logits)
    pos = (labels >= 0) & (labels < num_classes)
    pos_idx = pos.nonzero().view(-1)
    target[pos_idx, labels[pos_idx]] = scores[pos_idx].to(logits.dtype)
    return target


def quality_focal_loss(logits: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """Quality Focal Loss per sample, summed over classes.

    ``logits [N, C]``; ``labels [N]`` int64 with ``C`` meaning negative; ``scores [N]`` the IoU
    targets (read for positives only). Neither modulating factor is detached. -> ``[N]``.
    """
    if logits.dim() != 2:
        raise ValueError(f"quality_focal_loss: logits must be [N, C], got {tuple(logits.shape)}")
    target = qfl_soft_target(logits, labels, scores)
    return _QualityFocal.apply(logits, target, float(beta)).sum(dim=1)


def quality_focal_loss_autograd(logits: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """The same loss through plain autograd (the readable form; used to cross-check)."""
    target = qfl_soft_target(logits, labels, scores)
    p = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * (target - p).abs().pow(beta)).sum(dim=1)


def quality_focal_loss_prob(probs: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """QFL on probabilities (mmdet's ``activated=True``), for scores that are a product (GFLv2's DGQP).

    ``probs [N, C]`` in [0, 1]; ``labels``/``scores`` as :func:`quality_focal_loss`. The BCE is
    torch's (log clamped at -100), run outside autocast because it refuses reduced precision.
    -> ``[N]``.
    """
    if probs.dim() != 2:
        raise ValueError(f"quality_focal_loss_prob: probs must be [N, C], got {tuple(probs.shape)}")
    # reduced precision is widened; float32/float64 are kept as they are
    p = probs.float() if probs.dtype in (torch.float16, torch.bfloat16) else probs
    target = qfl_soft_target(p, labels, scores)
    with torch.autocast(device_type=p.device.type, enabled=False):
        bce = F.binary_cross_entropy(p, target, reduction="none")
        return (bce * (p - target).abs().pow(beta)).sum(dim=1)


def quality_focal_loss_log(log_probs: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """QFL on probabilities given by their logs, for a product score ``s = s1 s2`` (GFLv2's DGQP):
    ``log s = log s1 + log s2`` stays exact where ``s`` itself underflows.

    ``BCE(s, t) = -(t log s + (1 - t) log(1 - s))`` with ``log(1 - s) = log(-expm1(log s))``, and
    the modulator ``|s - t|^beta``; so the gradient of a positive at ``s = 1e-20`` is about
    ``-t^(1+beta)`` per unit of ``log s``, where torch's ``binary_cross_entropy`` divides by
    ``max(s(1 - s), 1e-12)`` and loses it. ``log(1 - s)`` is floored at ``log(tiny)`` (-87.3 in
    float32), where ``1 - s`` is no longer a normal number (torch's BCE floors it at -100).
    ``log_probs [N, C]`` (<= 0); ``labels``/``scores`` as :func:`quality_focal_loss`. -> ``[N]``.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"quality_focal_loss_log: log_probs must be [N, C], got {tuple(log_probs.shape)}")
    lp = log_probs.float() if log_probs.dtype in (torch.float16, torch.bfloat16) else log_probs
    target = qfl_soft_target(lp, labels, scores)
    with torch.autocast(device_type=lp.device.type, enabled=False):
        # clamp below 0 so that expm1 never returns 0 (log 0 would make a 0 * inf gradient)
        log1m = pmath.log(-torch.expm1(lp.clamp(max=-torch.finfo(lp.dtype).tiny)))
        bce = -(target * lp + (1 - target) * log1m)
        return (bce * (pmath.exp(lp) - target).abs().pow(beta)).sum(dim=1)


def kl_box_loss(mean: Tensor, log_var: Tensor, target: Tensor) -> Tensor:
    """He et al. 2019's KL loss of a Gaussian side ``N(mean, exp(log_var))`` against a Dirac at ``target``.

    ``exp(-alpha) * smoothL1(mean - target) + alpha / 2`` with ``alpha = log_var`` and the smooth L1
    of beta 1 (``d^2/2`` below 1, ``|d| - 1/2`` above), the constants of the KL dropped as there.
    Element-wise on equal shapes (``[P, 4]``); it can be negative where the variance is small.
    """
    return pmath.exp(-log_var) * F.smooth_l1_loss(mean, target, reduction="none", beta=1.0) + log_var / 2


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """RetinaNet's focal loss on one-hot targets, per sample summed over classes (mmdet's form).

    ``logits [N, C]``, ``labels [N]`` with ``C`` meaning negative (an all-zero target row).
    ``BCE(x, t) * (alpha t + (1-alpha)(1-t)) * pt^gamma`` with ``pt = 1 - p`` for t=1 and ``p``
    for t=0. -> ``[N]``.
    """
    if logits.dim() != 2:
        raise ValueError(f"sigmoid_focal_loss: logits must be [N, C], got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    target = torch.zeros_like(logits)
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().view(-1)
    target[pos, labels[pos]] = 1.0
    p = logits.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * focal_weight).sum(dim=1)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution Focal Loss: ``logits [N, R+1]``, continuous ``target [N]`` in ``[0, R)``.

    ``CE(z, floor(t)) * (floor(t)+1-t) + CE(z, floor(t)+1) * (t-floor(t))`` -> ``[N]``.
    """
    left = target.long()
    right = left + 1
    w_left = right.to(target.dtype) - target
    w_right = target - left.to(target.dtype)
    return (F.cross_entropy(logits, left, reduction="none") * w_left
            + F.cross_entropy(logits, right, reduction="none") * w_right)


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """``1 - GIoU`` of aligned box pairs ``[N, 4]`` -> ``[N]``."""
    return 1 - generalized_iou(pred, target, eps)


def reduce_loss(loss: Tensor, weight: Optional[Tensor] = None, avg_factor: Optional[float] = None,
                loss_weight: float = 1.0) -> Tensor:
    """mmdet's weighted mean: ``loss_weight * sum(loss * weight) / (avg_factor + eps)``.

    Without ``avg_factor`` it is the plain mean. A weight that is zero everywhere gives an exact
    zero that stays in the graph (mmdet's IoU losses short-circuit the same way).
    """
    if weight is not None:
        if weight.numel() and not bool((weight > 0).any()):
            return (loss * weight).sum() * loss_weight
        loss = loss * weight
    if avg_factor is None:
        return loss_weight * loss.mean()
    return loss_weight * (loss.sum() / (avg_factor + AVG_EPS))
