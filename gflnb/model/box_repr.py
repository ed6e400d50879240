"""Box representations (paper Table 2a): what the regression conv predicts per anchor, how that
becomes the four side distances, and which extra term (DFL, KL) trains the representation.

* ``dirac``: the four distances regressed directly (FCOS/ATSS-like, in stride units), GIoU only.
* ``gaussian``: a mean and a log-variance per side (He et al., CVPR 2019), GIoU on the means plus
  their KL loss (``loss_kl``); the variance is not used at test time.
* ``integral``: a general distribution over ``reg_max + 1`` bins read out by the Integral, GIoU only.
* ``dfl``: the same distribution, also trained with DFL (GFL's default).

``bin_interval`` (Table 2c) is the bins' width in strides for ``integral``/``dfl``: bin j sits at
``j * bin_interval``. At 1 (the default) every operation is the reference's.

A coder holds no tensors (the Integral's ``project`` buffer stays on the head under its mmdet key),
so it is a plain object, not a module: it adds nothing to the state dict.
Distances are always in units of the level's stride; ``d * s`` gives pixels.
"""
from __future__ import annotations

from torch import Tensor

from ..boxes import bbox2distance, integral
from ..config import BOXES, ConfigError
from ..losses import AVG_EPS, distribution_focal_loss, kl_box_loss


def _zero_in_graph(t: Tensor) -> Tensor:
    """0 with a (zero) gradient path to ``t``; ``+ 0.0`` turns the -0.0 of a negative sum into 0.0 for logs."""
    return t.sum() * 0 + 0.0


class Coder:
    """Base of the box coders: no extra loss terms unless a coder names some."""

    name = ""
    has_distribution = False
    extra_loss_names: tuple[str, ...] = ()  # loss-dict keys that :meth:`extra_losses` returns
    channels = 0  # per anchor in the regression conv

    def decode(self, reg: Tensor) -> Tensor:
        """``[..., channels]`` -> ``[..., 4]`` distances in stride units."""
        raise NotImplementedError

    def distribution(self, reg: Tensor) -> Tensor:
        """``[N, channels]`` -> ``[N, 4, R+1]`` per-side bin probabilities."""
        raise NotImplementedError

    def dfl_loss(self, reg: Tensor, ctr: Tensor, gt_box: Tensor, weight: Tensor, loss_weight: float) -> Tensor:
        """The DFL sum before the head's 1/W."""
        raise NotImplementedError

    def extra_losses(self, reg: Tensor, ctr: Tensor, gt_box: Tensor, weight: Tensor,
                     loss_weight: float) -> dict[str, Tensor]:
        """The coder's own terms beyond GIoU and DFL, before the head's 1/W (none by default)."""
        return {}


def _check_interval(bin_interval: float) -> float:
    if not bin_interval > 0:
        raise ConfigError(f"bin_interval must be > 0, got {bin_interval}")
    return float(bin_interval)


class DiracCoder(Coder):
    """Four distances per anchor, clamped at 0 as mmdet's FCOS does with ``norm_on_bbox``."""

    name = "dirac"
    has_distribution = False

    def __init__(self, reg_max: int = 16, bin_interval: float = 1.0):
        if bin_interval != 1:
            raise ConfigError(f"bin_interval is the width of a distribution's bins; box {self.name!r} has none")
        self.reg_max = reg_max  # unused: kept so every coder is built the same way
        self.channels = 4

    def decode(self, reg: Tensor) -> Tensor:
        """``[..., 4]`` raw outputs -> ``[..., 4]`` distances; a negative side would flip the box."""
        return reg.clamp(min=0)

    def distribution(self, reg: Tensor) -> Tensor:
        raise ValueError(f"box representation {self.name!r} has no distribution (use 'integral' or 'dfl')")

    def dfl_loss(self, reg: Tensor, ctr: Tensor, gt_box: Tensor, weight: Tensor, loss_weight: float) -> Tensor:
        """No DFL term: an exact zero that stays in the graph, so ``loss_dfl`` is always reported."""
        return _zero_in_graph(reg)


class GaussianCoder(DiracCoder):
    """Per side a mean distance and a log-variance ``alpha = log sigma^2`` (He et al. 2019's KL loss).

    ``reg [..., 8]``: means (left, top, right, bottom) then their log-variances, in stride units.
    The head's per-level Scale multiplies all 8 outputs; for alpha that only rescales its logit.
    """

    name = "gaussian"
    extra_loss_names = ("loss_kl",)

    def __init__(self, reg_max: int = 16, bin_interval: float = 1.0):
        super().__init__(reg_max, bin_interval)
        self.channels = 8

    def decode(self, reg: Tensor) -> Tensor:
        """``[..., 8]`` -> ``[..., 4]`` distances: the means, clamped at 0 as the Dirac's are."""
        return reg[..., :4].clamp(min=0)

    def extra_losses(self, reg: Tensor, ctr: Tensor, gt_box: Tensor, weight: Tensor,
                     loss_weight: float) -> dict[str, Tensor]:
        """``loss_kl = loss_weight * sum_i sum_sides w_i KL / (4 + eps)``, before the head's 1/W, as DFL's.

        ``reg [P, 8]``, ``ctr [P, 2]``, ``gt_box [P, 4]`` in stride units, ``weight [P]``. The KL
        reads the unclamped means, so a mean below 0 is still pulled back.
        """
        target = bbox2distance(ctr, gt_box)  # [P, 4], no range: a Gaussian has no last bin
        kl = kl_box_loss(reg[:, :4], reg[:, 4:8], target)  # [P, 4]
        return dict(loss_kl=loss_weight * (kl * weight[:, None]).sum() / (4.0 + AVG_EPS))


class IntegralCoder(Coder):
    """Four distributions over bins 0..R; the distance is their expectation (the Integral)."""

    name = "integral"
    has_distribution = True

    def __init__(self, reg_max: int = 16, bin_interval: float = 1.0):
        self.reg_max = reg_max
        self.interval = _check_interval(bin_interval)
        self.channels = 4 * (reg_max + 1)

    def decode(self, reg: Tensor) -> Tensor:
        """``[..., 4(R+1)]`` logits (side k, bin j at ``k(R+1)+j``) -> ``[..., 4]`` distances."""
        d = integral(reg, self.reg_max)  # in bins
        return d if self.interval == 1 else d * self.interval  # at 1, the reference's exact operations

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
        if self.interval != 1:  # the target in bins of width `interval`, clamped to the same [0, R - 0.1]
            ctr, gt_box = ctr / self.interval, gt_box / self.interval
        target = bbox2distance(ctr, gt_box, self.reg_max, eps=0.1).reshape(-1)  # [4P]
        dfl = distribution_focal_loss(reg.reshape(-1, self.reg_max + 1), target)  # [4P]
        return loss_weight * (dfl * weight.repeat_interleave(4)).sum() / (4.0 + AVG_EPS)


_CODERS = {c.name: c for c in (DiracCoder, GaussianCoder, IntegralCoder, DFLCoder)}
assert tuple(sorted(_CODERS)) == tuple(sorted(BOXES)), "config.BOXES and the coders disagree"


def build_box_coder(box: str, reg_max: int, bin_interval: float = 1.0) -> Coder:
    """The coder named by the config's ``box`` field (``bin_interval``: Table 2c's bin width)."""
    if box not in _CODERS:
        raise ConfigError(f"box must be one of {', '.join(map(repr, BOXES))}, got {box!r}")
    return _CODERS[box](reg_max, bin_interval)
