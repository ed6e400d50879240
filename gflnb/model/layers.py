"""Small building blocks whose attribute names reproduce mmcv's state-dict keys."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class ConvModule(nn.Module):
    """conv -> optional GroupNorm -> optional ReLU, with mmcv's key names (``conv``, ``gn``).

    As in mmcv, the conv has a bias only when no norm follows it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 num_groups: Optional[int] = None, act: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              bias=num_groups is None)
        self.gn = nn.GroupNorm(num_groups, out_channels) if num_groups is not None else None
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.gn is not None:
            x = self.gn(x)
        if self.act is not None:
            x = self.act(x)
        return x


class Scale(nn.Module):
    """A learnable 0-dim multiplier (``scales.i.scale``)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale
