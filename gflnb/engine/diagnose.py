"""Training diagnostics: per-iteration statistics of the quality and box outputs, recorded by hooks
that read what a training step computes and change none of it (issue 18's DGQP probes).

:class:`Recorder` wraps the head's ``loss`` and its quality component's ``loss`` on one model
instance, adds a gradient hook per parameter and an optimizer post-step hook; each optimizer step
then yields one record:

* ``lr``, the loss terms, ``num_pos``;
* ``cls_pos_*``: log10 sigmoid(cls) of the positives at their gt class (mean/min/max), ``cls_all_*``
  over every (valid anchor, class) pair; ``joint_pos_*`` / ``joint_neg_max_mean``: log10 of the score
  QFL trains (the class score for ``qfl``, sigmoid(cls) x DGQP for ``dgqp``);
* ``iou_*``: the positives' IoU target; ``top1_pos`` / ``top1_neg``: the mean top-1 bin mass of the
  box distributions (mean over the four sides);
* DGQP only: ``q_pos_*`` (the quality on positives), ``log10q_neg_mean``, ``z_min`` / ``z_max`` /
  ``z_pos_mean`` / ``z_neg_mean`` (its logit), and ``dz_pos`` / ``dz_neg``: d loss_cls / d z summed
  over the positive and over the negative anchors (who pushes the quality which way);
* ``dreg_cls_pos`` / ``dreg_cls_neg``: the norm of d loss_cls / d (box logits) on positive and on
  negative anchors (what QFL sends into the regression tower), ``dreg_all``: the norm of the total
  gradient on the box logits (every loss);
* ``grad_<group>``: the gradient norm of each parameter group before clipping (:data:`GROUPS`);
  ``qgrad_cls`` / ``qgrad_box``: the quality component's parameter gradient from loss_cls and from
  the box losses, and ``dbias_cls`` / ``dbias_box`` the same for DGQP's last bias (the sum of
  d loss / d z over anchors: negative pushes the quality up, positive down).

The extra gradients come from ``torch.autograd.grad`` on detached copies, which touches no
``.grad``; the statistics run under ``no_grad``. So a traced run trains the same model as
``gflnb train`` (tests/test_diagnose.py checks the losses match bit for bit).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import GFLConfig, from_dict
from ..losses import AVG_EPS, quality_focal_loss_log
from .train import Run, TrainingDiverged, TrainOptions, end_epoch, evaluate_epoch, setup, train_epoch

# parameter-name prefixes of the groups whose gradient norms are logged
GROUPS: dict[str, tuple[str, ...]] = {
    "dgqp": ("bbox_head.quality.",),
    "reg_tower": ("bbox_head.reg_convs.", "bbox_head.gfl_reg.", "bbox_head.scales."),
    "cls_tower": ("bbox_head.cls_convs.", "bbox_head.gfl_cls."),
    "backbone_neck": ("backbone.", "neck."),
}
LOG10 = math.log(10.0)


def _summary(prefix: str, x: Tensor) -> dict[str, float]:
    """``{prefix_mean, prefix_min, prefix_max}`` of a 1-d tensor (NaN when it is empty)."""
    if x.numel() == 0:
        return {f"{prefix}_{k}": float("nan") for k in ("mean", "min", "max")}
    x = x.double()
    return {f"{prefix}_mean": x.mean().item(), f"{prefix}_min": x.min().item(), f"{prefix}_max": x.max().item()}


def group_of(name: str) -> Optional[str]:
    """The :data:`GROUPS` key a parameter name belongs to, or None."""
    for g, prefixes in GROUPS.items():
        if name.startswith(prefixes):
            return g
    return None


class Recorder:
    """Hooks on one run's model and optimizer; ``records`` grows by one dict per optimizer step.

    ``on_record(rec)`` is called with each record (a probe writes it as a JSON line).
    """

    def __init__(self, run: Run, on_record: Optional[Callable[[dict], None]] = None):
        self.run, self.on_record = run, on_record
        self.records: list[dict] = []
        self.current: dict[str, Any] = {}
        self.sq: dict[str, float] = {}
        head = run.model.bbox_head
        self.head, self.quality = head, head.quality
        self._head_loss, self._quality_loss = head.loss, head.quality.loss
        self._head_forward = head.forward
        head.loss = self._wrap_head_loss  # instance attributes: only this model is traced
        head.quality.loss = self._wrap_quality_loss
        head.forward = self._wrap_forward
        self.handles = []
        for name, p in run.model.named_parameters():
            g = group_of(name)
            if g is not None and p.requires_grad:
                self.handles.append(p.register_post_accumulate_grad_hook(self._grad_hook(g)))
        self.handles.append(run.optimizer.register_step_post_hook(self._after_step))

    # ------------------------------------------------------------------ hooks
    def _grad_hook(self, group: str) -> Callable[[Tensor], None]:
        def hook(p: Tensor) -> None:
            self.sq[group] = self.sq.get(group, 0.0) + float(p.grad.detach().double().pow(2).sum())
        return hook

    def _wrap_forward(self, feats: Sequence[Tensor]):
        cls_scores, bbox_preds = self._head_forward(feats)
        if torch.is_grad_enabled():
            self.current["dreg_all_sq"] = 0.0
            for r in bbox_preds:
                if r.requires_grad:
                    r.register_hook(self._reg_grad_hook)
        return cls_scores, bbox_preds

    def _reg_grad_hook(self, g: Tensor) -> None:
        box = g[:, :self.head.box_channels]  # the box logits, without a separate branch's channel
        self.current["dreg_all_sq"] = self.current.get("dreg_all_sq", 0.0) + float(box.double().pow(2).sum())

    def _wrap_head_loss(self, *args, **kwargs) -> dict[str, Tensor]:
        losses = self._head_loss(*args, **kwargs)
        self.current.update({k: float(v.detach()) for k, v in losses.items()})
        if torch.is_grad_enabled():
            self.current.update(self._quality_param_gradients(losses))
        return losses

    def _quality_param_gradients(self, losses: dict[str, Tensor]) -> dict[str, float]:
        """The quality component's parameter gradient split by loss: ``qgrad_cls`` / ``qgrad_box`` (norms
        from loss_cls and from the box losses) and, where the last layer has a 1-element bias (DGQP's
        quality logit z), ``dbias_cls`` / ``dbias_box``: d loss / d bias = the sum of d loss / d z."""
        params = [p for p in self.quality.parameters() if p.requires_grad]
        if not params:
            return {}
        out: dict[str, float] = {}
        box = sum(v for k, v in losses.items() if k != "loss_cls" and k != "loss_quality")
        for tag, loss in (("cls", losses["loss_cls"]), ("box", box)):
            if not isinstance(loss, Tensor) or not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            out[f"qgrad_{tag}"] = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))
            if params[-1].numel() == 1 and grads[-1] is not None:
                out[f"dbias_{tag}"] = float(grads[-1].sum())
        return out

    def _wrap_quality_loss(self, cls: Tensor, reg: Tensor, extra: Tensor, labels: Tensor, label_weights: Tensor,
                           pos, avg_factor: float) -> dict[str, Tensor]:
        out = self._quality_loss(cls, reg, extra, labels, label_weights, pos, avg_factor)
        self.current.update(self.statistics(cls, reg, extra, labels, label_weights, pos, avg_factor))
        return out

    def _after_step(self, optimizer, args, kwargs) -> None:
        rec = dict(iter=self.run.state["global_iter"] + 1, lr=optimizer.param_groups[0]["lr"])
        cur = dict(self.current)
        dreg = cur.pop("dreg_all_sq", None)
        rec.update(cur)
        rec["loss"] = sum(cur.get(k, 0.0) for k in ("loss_cls", "loss_bbox", "loss_dfl", "loss_quality", "loss_kl"))
        if dreg is not None:
            rec["dreg_all"] = math.sqrt(dreg)
        rec.update({f"grad_{g}": math.sqrt(v) for g, v in self.sq.items()})
        self.records.append(rec)
        if self.on_record is not None:
            self.on_record(rec)
        self.current, self.sq = {}, {}

    def remove(self) -> None:
        """Undo every hook and wrapper."""
        for h in self.handles:
            h.remove()
        for obj, name in ((self.head, "loss"), (self.head, "forward"), (self.quality, "loss")):
            obj.__dict__.pop(name, None)

    # ------------------------------------------------------------------ statistics
    def statistics(self, cls: Tensor, reg: Tensor, extra: Tensor, labels: Tensor, label_weights: Tensor,
                   pos, avg_factor: float) -> dict[str, float]:
        """The record's statistics of one loss call: ``cls [N, C]``, ``reg [N, box channels]``, ...

        (the arguments of ``Quality.loss``; ``pos`` None when the batch has no positive).
        """
        out: dict[str, float] = {}
        C = cls.shape[1]
        valid = label_weights > 0  # [N]
        is_pos = torch.zeros_like(valid)
        if pos is not None:
            is_pos[pos.index] = True
        neg = valid & ~is_pos
        dgqp = self.quality.name == "dgqp"
        with torch.no_grad():
            lc = F.logsigmoid(cls.detach().float())  # [N, C] log sigmoid(cls)
            out["num_pos"] = int(is_pos.sum())
            out.update(_summary("cls_all", lc[valid].reshape(-1) / LOG10))
            if dgqp:
                z = self.quality.quality_logit(reg.detach().float())  # [N]
                lz = F.logsigmoid(z)
                lj = lc + lz[:, None]  # [N, C] log of the joint score
                out.update(z_min=z[valid].min().item(), z_max=z[valid].max().item(),
                           z_pos_mean=z[is_pos].mean().item() if pos is not None else float("nan"),
                           z_neg_mean=z[neg].mean().item(), log10q_neg_mean=(lz[neg].mean() / LOG10).item())
            else:
                lj = lc
            out["joint_neg_max_mean"] = (lj[neg].max(dim=1)[0].mean() / LOG10).item()
            if pos is not None:
                gt = labels[pos.index]
                out.update(_summary("cls_pos", lc[pos.index, gt] / LOG10))
                out.update(_summary("joint_pos", lj[pos.index, gt] / LOG10))
                out.update(_summary("iou", pos.iou.detach()))
                if dgqp:
                    out.update(_summary("q_pos", lz[pos.index].exp()))
            if self.head.box_coder.has_distribution:
                top1 = self.head.box_coder.distribution(reg.detach().float()).max(dim=2)[0].mean(dim=1)  # [N]
                out["top1_pos"] = top1[is_pos].mean().item() if pos is not None else float("nan")
                out["top1_neg"] = top1[neg].mean().item()
        out.update(self._loss_gradients(cls, reg, extra, labels, label_weights, pos, avg_factor, is_pos, neg))
        return out

    def _loss_gradients(self, cls: Tensor, reg: Tensor, extra: Tensor, labels: Tensor, label_weights: Tensor,
                        pos, avg_factor: float, is_pos: Tensor, neg: Tensor) -> dict[str, float]:
        """d loss_cls / d (box logits) and, for DGQP, / d (quality logit), split by positives and negatives."""
        out: dict[str, float] = {}
        with torch.enable_grad():
            c = cls.detach().float().requires_grad_()
            r = reg.detach().float().requires_grad_()
            loss = self._quality_loss(c, r, extra.detach(), labels, label_weights, pos, avg_factor)["loss_cls"]
            if not loss.requires_grad:
                return out
            (gr,) = torch.autograd.grad(loss, [r], allow_unused=True)
            if gr is not None:
                out["dreg_cls_pos"] = gr[is_pos].double().norm().item()
                out["dreg_cls_neg"] = gr[neg].double().norm().item()
            if self.quality.name == "dgqp":
                z = self.quality.quality_logit(reg.detach().float()).detach().requires_grad_()
                score = label_weights.new_zeros(cls.shape[0])
                if pos is not None:
                    score[pos.index] = pos.iou
                lj = F.logsigmoid(cls.detach().float()) + F.logsigmoid(z)[:, None]
                q = self.quality
                lq = q.loss_cls_weight * (quality_focal_loss_log(lj, labels, score, q.beta) * label_weights).sum() \
                    / (avg_factor + AVG_EPS)
                (gz,) = torch.autograd.grad(lq, [z])
                out["dz_pos"] = gz[is_pos].double().sum().item()
                out["dz_neg"] = gz[neg].double().sum().item()
        return out


def trace(cfg: GFLConfig, opts: TrainOptions, interventions: Sequence[Callable[[Run], None]] = (),
          on_record: Optional[Callable[[dict], None]] = None, evaluate: bool = True) -> tuple[list[dict], dict]:
    """Train as :func:`gflnb.engine.train.train` does (to ``opts.max_iters`` or the end), recording each step.

    ``interventions`` are applied to the run after its set-up and before the hooks (a probe's
    change to the optimizer or the model); with none, the numerics are ``gflnb train``'s.
    Returns ``(records, metrics)``: ``metrics`` holds ``iterations``, ``train_minutes``,
    ``stop_reason`` (``diverged: ...`` where a loss became non-finite: the records end there) and the
    AP of a validation pass at the end when ``evaluate`` and the options name a validation set.
    """
    if opts.epochs is not None:
        cfg = from_dict({**cfg.to_dict(), "epochs": int(opts.epochs)})
    run = setup(cfg, opts)
    for f in interventions:
        f(run)
    rec = Recorder(run, on_record)
    t_start = time.perf_counter()
    metrics: dict = {}
    stop = "finished"
    try:
        try:
            while run.state["epoch"] < cfg.epochs:
                stop = train_epoch(run, t_start) or stop
                if stop != "finished":
                    break
                end_epoch(run)
        except TrainingDiverged as e:  # the step was skipped: the weights are the last good ones
            stop = f"diverged: {e}"
        rec.remove()
        metrics.update(stop_reason=stop, iterations=run.state["global_iter"],
                       train_minutes=round((time.perf_counter() - t_start) / 60, 3))
        if evaluate and run.val_ds is not None:
            metrics.update(evaluate_epoch(run).metrics)
    finally:
        if run.log is not None:
            run.log.close()
    return rec.records, metrics


def write_jsonl(path: Path, records: Sequence[dict], digits: int = 6) -> None:
    """One record per line, floats to ``digits`` significant digits (keeps a probe's log small)."""
    def r(v):
        return float(f"{v:.{digits}g}") if isinstance(v, float) and math.isfinite(v) else v
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: r(v) for k, v in rec.items()}) + "\n" for rec in records))
