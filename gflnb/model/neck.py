"""Feature Pyramid Network with mmdet's semantics and key names.

P3-P5 from C3-C5 (``start_level=1``), extra levels from the **P5 output** by stride-2 3x3 convs
(``add_extra_convs='on_output'``) with **no ReLU** before P7; torchvision's ``LastLevelP6P7``
differs on both points.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ConvModule


class FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5, start_level: int = 1):
        super().__init__()
        self.in_channels, self.start_level, self.num_outs = list(in_channels), start_level, num_outs
        self.num_used = len(in_channels) - start_level
        if num_outs < self.num_used:
            raise ValueError(f"FPN: num_outs={num_outs} is fewer than the {self.num_used} backbone levels used")
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in self.in_channels[start_level:])
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1)
                                       for _ in range(self.num_used))
        for _ in range(num_outs - self.num_used):  # P6, P7, ... on the last output
            self.fpn_convs.append(ConvModule(out_channels, out_channels, 3, stride=2, padding=1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} inputs, got {len(inputs)}")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(self.num_used - 1, 0, -1):  # top-down, nearest to the exact lower size
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(self.num_used)]
        for i in range(self.num_used, self.num_outs):
            outs.append(self.fpn_convs[i](outs[-1]))
        return outs
