"""ResNet / ResNeXt backbone built from torchvision's blocks, with mmdet's training semantics.

State-dict keys are torchvision's (``conv1.weight``, ``layer1.0.conv1.weight``, ...), which are
also mmdetection's after its ``backbone.`` prefix. Differences from a stock torchvision model:

* ``norm_eval``: every BatchNorm stays in eval mode while training (running statistics are
  never updated) but the affine parameters of unfrozen stages still train (unlike
  ``FrozenBatchNorm2d``).
* ``frozen_stages``: stem and the first ``frozen_stages`` stages get ``requires_grad=False``.
* ``stage_with_dcn``: the 3x3 conv2 of every bottleneck in the flagged stages becomes a
  deformable conv (DCNv1, one deform group) with a zero-initialised offset conv.
* ``base_channels`` scales the whole network (64 is the standard width), for small CPU models.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tvr
from torchvision.ops import deform_conv2d

ARCH = {18: (tvr.BasicBlock, (2, 2, 2, 2)), 34: (tvr.BasicBlock, (3, 4, 6, 3)),
        50: (tvr.Bottleneck, (3, 4, 6, 3)), 101: (tvr.Bottleneck, (3, 4, 23, 3)),
        152: (tvr.Bottleneck, (3, 8, 36, 3))}
# ImageNet weights the reference starts from (torchvision V1, via mmengine's hub map).
TORCHVISION_WEIGHTS = {18: "ResNet18_Weights", 34: "ResNet34_Weights", 50: "ResNet50_Weights",
                       101: "ResNet101_Weights", 152: "ResNet152_Weights"}
RESNEXT101_32X4D_URL = "https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth"


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be obtained or do not fit the backbone."""


class DeformConv2dPack(nn.Module):
    """mmcv's ``DeformConv2dPack``: DCNv1 whose offsets come from a plain conv (with bias).

    Keys: ``weight`` (no bias) and ``conv_offset.{weight,bias}``; the offset conv is
    zero-initialised, so the layer starts out as an ordinary convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, deform_groups: int = 1):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.conv_offset = nn.Conv2d(in_channels, deform_groups * 2 * kernel_size * kernel_size, kernel_size,
                                     stride=stride, padding=padding, dilation=dilation, bias=True)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        offset = self.conv_offset(x)  # [B, 2*k*k, H', W'], (dy, dx) per tap
        return deform_conv2d(x, offset, self.weight, None, stride=self.stride, padding=self.padding,
                             dilation=self.dilation)


class ResNet(nn.Module):
    """C2..C5 feature extractor; ``forward`` returns the stages named by ``out_indices``."""

    def __init__(self, depth: int = 50, groups: int = 1, base_width: int = 64, base_channels: int = 64,
                 stage_with_dcn: Sequence[bool] = (False,) * 4, frozen_stages: int = 1, norm_eval: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        if depth not in ARCH:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCH)}, got {depth}")
        block, layers = ARCH[depth]
        if block is tvr.BasicBlock and (groups != 1 or base_width != 64 or any(stage_with_dcn)):
            raise ValueError(f"ResNet-{depth} (BasicBlock) supports neither groups, base_width nor DCN")
        self.depth, self.frozen_stages, self.norm_eval = depth, frozen_stages, norm_eval
        self.out_indices = tuple(out_indices)
        self.groups, self.base_width = groups, base_width
        self.inplanes = base_channels
        self.conv1 = nn.Conv2d(3, base_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, n in enumerate(layers):
            planes = base_channels * 2 ** i
            self.add_module(f"layer{i + 1}", self._make_layer(block, planes, n, 1 if i == 0 else 2,
                                                              bool(stage_with_dcn[i])))
        self.out_channels = [base_channels * 2 ** i * block.expansion for i in range(4)]
        self._init_random()
        self._freeze_stages()

    def _make_layer(self, block, planes: int, blocks: int, stride: int, dcn: bool) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(tvr.conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        mods = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                 for _ in range(1, blocks)]
        if dcn:  # style 'pytorch': the stride sits in conv2, so the DCN carries it too
            for m in mods:
                c = m.conv2
                m.conv2 = DeformConv2dPack(c.in_channels, c.out_channels, 3, stride=c.stride[0], padding=1,
                                           groups=c.groups)
        return nn.Sequential(*mods)

    def _init_random(self) -> None:
        # torchvision's ResNet init: Kaiming-normal (fan_out) convs, BN gamma 1 and beta 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DeformConv2dPack):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.conv_offset.weight)
                nn.init.zeros_(m.conv_offset.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return outs

    # ------------------------------------------------------------------ ImageNet init
    def load_pretrained(self, source: Union[bool, str]) -> None:
        """Load ImageNet weights: ``True`` for the reference's source, a str for a local file.

        Raises :class:`PretrainedWeightsError` with one line saying what could not be had.
        """
        if source is False or source is None:
            return
        what = source if isinstance(source, str) else self._pretrained_name()
        try:
            if isinstance(source, str):
                obj = torch.load(source, map_location="cpu", weights_only=True)
            else:
                obj = self._download_pretrained()
        except PretrainedWeightsError:
            raise
        except Exception as e:  # network, file or unpickling errors: one readable line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PretrainedWeightsError(
                f"cannot load ImageNet weights for the backbone ({what}): {first}. "
                "Pass pretrained_backbone=False or a local weights file.") from None
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
        sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        own = self.state_dict()
        missing = [k for k in own if k not in sd and "conv_offset" not in k]
        unexpected = [k for k in sd if k not in own]
        shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or shape:
            raise PretrainedWeightsError(
                f"ImageNet weights {what} do not fit ResNet-{self.depth}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shape {shape[:5]}")
        self.load_state_dict(sd, strict=False)
        self._freeze_stages()

    def _pretrained_name(self) -> str:
        if self.groups == 32 and self.base_width == 4 and self.depth == 101:
            return RESNEXT101_32X4D_URL
        return f"torchvision {TORCHVISION_WEIGHTS.get(self.depth, '?')}.IMAGENET1K_V1"

    def _download_pretrained(self) -> dict:
        if self.inplanes != 512 * tvr.Bottleneck.expansion and self.inplanes != 512:
            raise PretrainedWeightsError(f"no ImageNet weights exist for a ResNet of base_channels != 64")
        if self.groups == 32 and self.base_width == 4 and self.depth == 101:
            return torch.hub.load_state_dict_from_url(RESNEXT101_32X4D_URL, map_location="cpu",
                                                      progress=True, weights_only=True)
        if self.groups != 1 or self.base_width != 64:
            raise PretrainedWeightsError(
                f"no ImageNet weights are known for ResNeXt-{self.depth} {self.groups}x{self.base_width}d; "
                "pass a local file as pretrained_backbone")
        import torchvision.models as tvm
        weights = getattr(tvm, TORCHVISION_WEIGHTS[self.depth]).IMAGENET1K_V1  # V1, as the reference
        return weights.get_state_dict(progress=True)
