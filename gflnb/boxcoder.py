"""Box representations (paper Table 2a): what the regression conv predicts per anchor, how that
becomes the four side distances, and whether a DFL term trains the distribution.

* ``dirac``: the four distances regressed directly (FCOS/ATSS-like, in stride units), GIoU only.
* ``integral``: a general distribution over ``reg_max + 1`` bins read out by the Integral, GIoU only.
* ``dfl``: the same distribution, also trained with DFL (GFL's default).

A coder holds no tensors (the Integral's ``project`` buffer stays on the head under its mmdet key),
so it is a plain object, not a module: it adds nothing to the state dict.
Distances are always in units of the level's stride; ``d * s`` gives pixels.
"""
from __future__ import annotations

from torch import Tensor

from .boxes import bbox2distance, integral
from .config import BOXES, ConfigError
from .losses import AVG_EPS, distribution_focal_loss


def _zero_in_graph(t: Tensor) -> Tensor:
    """0 with a (zero) gradient path to ``t``; ``+ 0.0`` turns the -0.0 of a negative sum into 0.0 for logs."""
    return t.sum() * 0 + 0.0


class DiracCoder:
    """Four distances per anchor, clamped at 0 as mmdet's FCOS does with ``norm_on_bbox``."""

    name = "dirac"
    has_distribution = False

    def __init__(self, reg_max: int = 16):
        self.reg_max = reg_max  # unused: kept so every coder is built the same way
        self.channels = 4

    def decode(self, reg: Tensor) -> Tensor:
        """``[..., 4]`` raw outputs -> ``[..., 4]`` distances; a negative side would flip the box."""
        return reg.clamp(min=0)

    def distribution(self, reg: Tensor) -> Tensor:
        raise ValueError("box representation 'dirac' has no distribution (use 'integral' or 'dfl')")

    def dfl_loss(self, reg: Tensor, ctr: Tensor, gt_box: Tensor, weight: Tensor, loss_weight: float) -> Tensor:
        """No DFL term: an exact zero that stays in the graph, so ``loss_dfl`` is always reported."""
        return _zero_in_graph(reg)


class IntegralCoder:
    """Four distributions over bins 0..R; the distance is their expectation (the Integral)."""

    name = "integral"
    has_distribution = True

    def __init__(self, reg_max: int = 16):
        self.reg_max = reg_max
        self.channels = 4 * (reg_max + 1)

    def decode(self, reg: Tensor) -> Tensor:
        """``[..., 4(R+1)]`` logits (side k, bin j at ``k(R+1)+j``) -> ``[..., 4]`` distances."""
        return integral(reg, self.reg_max)

    def distribution(self, reg: Tensor) -> Tensor:
        """``[N, 4(R+1)]`` logits -> ``[N, 4, R+1]`` per-side bin probabilities."""
        return reg.reshape(-1, 4, self.reg_max + 1).softmax(-1)

    def dfl_loss(self, reg: Tensor, ctr: Tensor, gt_box: Tensor, weight: Tensor, loss_weight: float) -> Tensor:
        """GIoU only (Table 2a's 'Integral' row): zero, kept in the graph."""
        return _zero_in_graph(reg)


class DFLCoder(IntegralCoder):
    """The Integral's distribution, also pulled towards the two bins around the target (DFL)."""

    name = "dfl"

    def dfl_loss(self, reg: Tensor, ctr: Tensor, gt_box: Tensor, weight: Tensor, loss_weight: float) -> Tensor:
        """``loss_weight * sum_i sum_sides w_i DFL / (4 + eps)``, before the head's 1/W.

        ``reg [P, 4(R+1)]``, ``ctr [P, 2]`` and ``gt_box [P, 4]`` in stride units, ``weight [P]``.
        Targets are clamped to ``[0, R - 0.1]`` (mmdet's eps 0.1) so the right bin exists.
        """
        target = bbox2distance(ctr, gt_box, self.reg_max, eps=0.1).reshape(-1)  # [4P]
        dfl = distribution_focal_loss(reg.reshape(-1, self.reg_max + 1), target)  # [4P]
        return loss_weight * (dfl * weight.repeat_interleave(4)).sum() / (4.0 + AVG_EPS)


BoxCoder = DiracCoder | IntegralCoder
_CODERS = {c.name: c for c in (DiracCoder, IntegralCoder, DFLCoder)}
assert tuple(sorted(_CODERS)) == tuple(sorted(BOXES)), "config.BOXES and the coders disagree"


def build_box_coder(box: str, reg_max: int) -> BoxCoder:
    """The coder named by the config's ``box`` field."""
    if box not in _CODERS:
        raise ConfigError(f"box must be one of {', '.join(map(repr, BOXES))}, got {box!r}")
    return _CODERS[box](reg_max)
