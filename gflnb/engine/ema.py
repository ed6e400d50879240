"""Exponential moving average of a model's weights (and buffers), for evaluation.

Short schedules end with weights that still jump from batch to batch; their running average
scores higher. The averaging container is torch's ``AveragedModel``; this file only supplies the
ramped decay ``decay * (1 - exp(-n / tau))`` (as in YOLOX), so the first updates weigh the
freshly initialised weights little.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def _ramped_ema(decay: float, tau: float):
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # counters such as BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        d = decay * (1.0 - math.exp(-float(n_averaged) / tau))
        torch._foreach_lerp_(averaged, current, 1.0 - d)
    return update


def make_ema(model: nn.Module, decay: float, tau: float) -> AveragedModel:
    """An averaged copy of ``model``; call ``.update_parameters(model)`` after each optimizer step.

    Buffers are averaged too (``use_buffers=True``), so BatchNorm statistics match the weights.
    """
    return AveragedModel(model, multi_avg_fn=_ramped_ema(decay, tau), use_buffers=True)
