"""The GFL detector: ResNet backbone, FPN neck, GFL head, with mmdetection's state-dict keys."""
from __future__ import annotations

import itertools
import weakref
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .backbone import ResNet
from ..config import GFLConfig, get_config
from ..numerics.conv import onednn_1x1
from .head import GFLHead
from .neck import FPN


def _check_nhwc_safe(model: nn.Module) -> None:
    """torch 2.14-2.15's CPU backward of an NHWC 1x1 stride-2 conv with under 16 input channels
    (oneDNN's AVX-512 kernel) corrupts the heap and crashes: refuse such models up front, on every
    machine, rather than crash on some."""
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                and m.in_channels < 16):
            raise ValueError(f"channels_last=True: {name} is a 1x1 stride-{m.stride[0]} conv with "
                             f"{m.in_channels} input channels, whose NHWC backward crashes torch on CPU; "
                             "use channels_last=False or at least 16 channels")


# model -> (weights key, its inference copy). Kept outside the module so that the copy is in neither
# ``state_dict()`` nor the module tree, and is not deep-copied or pickled with the model.
_INFERENCE_NETS: "weakref.WeakKeyDictionary[GFL, tuple[tuple, GFL]]" = weakref.WeakKeyDictionary()


def _weights_key(model: nn.Module, device: torch.device) -> tuple:
    """Changes whenever any weight or buffer may have: an in-place update (an optimizer step,
    ``load_state_dict``'s ``copy_``, BN statistics in train mode) bumps a tensor's version counter, and
    ``.to()`` or ``p.data = ...`` gives it new storage."""
    return (device,) + tuple((t.data_ptr(), t._version, t.dtype)
                             for t in itertools.chain(model.parameters(), model.buffers()))


class GFL(nn.Module):
    def __init__(self, cfg: GFLConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(cfg.depth, cfg.groups, cfg.base_width, cfg.base_channels, cfg.stage_with_dcn,
                               cfg.frozen_stages, cfg.norm_eval)
        if list(cfg.in_channels) != self.backbone.out_channels:
            raise ValueError(f"config {cfg.name!r}: in_channels {cfg.in_channels} do not match the backbone's "
                             f"outputs {tuple(self.backbone.out_channels)}")
        self.neck = FPN(cfg.in_channels, cfg.out_channels, cfg.num_outs, cfg.start_level)
        self.bbox_head = GFLHead.from_config(cfg)
        # single-threaded 1x1 convs through oneDNN, not MKL, whose numbers depend on the CPU's vendor
        onednn_1x1(self)
        # NHWC weights (and inputs, in extract_feat) for training and inference: oneDNN's NHWC convs
        # are faster on CPU (see cfg.channels_last).
        self._nhwc = False
        self._inference = False  # True on the inference copy (gflnb.model.fuse.inference_model) itself
        if cfg.channels_last:
            _check_nhwc_safe(self)  # training in NHWC; inference alone (gflnb.model.fuse) has no backward to crash
            self.use_channels_last()

    def use_channels_last(self) -> "GFL":
        """NHWC weights from now on, and NHWC inputs in ``extract_feat`` (in place; returns self)."""
        self._nhwc = True
        return self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "GFL":
        if mode:  # the weights are about to change: the next eval-mode predict builds its copy anew
            _INFERENCE_NETS.pop(self, None)
        return super().train(mode)

    def inference_net(self, device: Optional[torch.device | str] = None) -> "GFL":
        """The inference path of this model's current weights: an eval-mode copy with the backbone's
        BatchNorm folded into its convs, NHWC on CPU (:func:`gflnb.model.fuse.inference_model`).

        Built on first use and kept until the weights change (``load_state_dict``, a training step,
        ``train()``, ``.to()``), so a loop of calls makes one copy. ``self`` is left as it is: its
        ``state_dict()`` keeps mmdetection's keys. On the copy itself this returns the copy.
        """
        dev = torch.device(device) if device is not None else next(self.parameters()).device
        if self._inference:
            return self.to(dev)
        key = _weights_key(self, dev)
        hit = _INFERENCE_NETS.get(self)
        if hit is None or hit[0] != key:
            from .fuse import inference_model
            hit = (key, inference_model(self, dev))
            _INFERENCE_NETS[self] = hit
        return hit[1]

    def init_weights(self) -> None:
        """Load the backbone's ImageNet weights named by ``cfg.pretrained_backbone`` (if any)."""
        self.backbone.load_pretrained(self.cfg.pretrained_backbone)

    def extract_feat(self, images: Tensor) -> list[Tensor]:
        if self._nhwc:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.neck(self.backbone(images))

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``images [B, 3, H, W]`` normalized and padded -> per-level ``(cls_scores, bbox_preds)``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"GFL expects images [B, 3, H, W], got {tuple(images.shape)}")
        return self.bbox_head(self.extract_feat(images))

    def loss(self, images: Tensor, targets: Sequence[Mapping[str, Tensor]],
             metas: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        cls_scores, bbox_preds = self(images)
        return self.bbox_head.loss(cls_scores, bbox_preds, targets, metas)

    def predict(self, images: Tensor, metas: Sequence[Mapping[str, Any]], rescale: bool = True,
                fast: bool = True, **test_overrides: Any) -> list[dict[str, Tensor]]:
        """Detections per image, sorted by score: ``dict(boxes [K, 4], scores [K], labels [K])``.

        In eval mode (and ``fast``) the forward runs on :meth:`inference_net`, BN folded and NHWC on
        CPU, with the same outputs to fp32 rounding; ``fast=False`` or train mode runs the model as
        built.
        """
        net = self.inference_net(images.device) if fast and not self.training else self
        cls_scores, bbox_preds = net(images)
        c = self.cfg
        kw = dict(score_thr=c.score_thr, nms_pre=c.nms_pre, iou_threshold=c.iou_threshold,
                  max_per_img=c.max_per_img, min_bbox_size=c.min_bbox_size)
        kw.update(test_overrides)
        return self.bbox_head.predict(cls_scores, bbox_preds, metas, rescale=rescale, **kw)


def build_model(config: Union[str, GFLConfig] = "gfl_r50_fpn_1x_coco", **overrides: Any) -> GFL:
    """A GFL from a preset name or config, with any field overridden by name.

    The backbone starts from random weights; ``model.init_weights()`` loads ImageNet weights
    when ``pretrained_backbone`` asks for them (the trainer does this).
    """
    return GFL(get_config(config, **overrides))
