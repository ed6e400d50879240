"""Convolutions that run oneDNN's kernels on every CPU, whatever ATen's heuristic would choose.

ATen hands a CPU fp32 convolution to oneDNN, or runs it as im2col and a BLAS SGEMM, by a speed
heuristic (``use_mkldnn`` in aten/src/ATen/native/ConvUtils.h). The BLAS is MKL, which picks its
code path by CPU vendor and cannot be pinned on non-Intel CPUs (gflnb/numerics/portable.py), so the same
convolution gives AMD and Intel different last bits, and a detector trained from scratch turns
those into another model. oneDNN's kernels are capped at AVX2 on every machine. Two cases fall to
MKL:

* one image and a small map (any kernel): the inference path runs :class:`OneDNNConv2d`;
* a 1x1 kernel, unstrided and undilated, on fewer than 16 images with one thread: this is every
  FPN lateral conv (and R-50's bottleneck 1x1s) when a sweep trains at ``OMP_NUM_THREADS=1``, in
  the forward pass and the backward. :class:`OneDNNConv1x1` covers it. Found by
  ``gflnb.numerics.optrace`` under an emulated AMD CPUID (experiments/portability/README.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

# ATen's heuristic keeps 1x1 convolutions of fewer images than this off oneDNN when single-threaded
_ATEN_1X1_MIN_BATCH = 16


class OneDNNConv2d(nn.Conv2d):
    """A Conv2d (inference only) that runs oneDNN's convolution on CPU fp32 at every size.

    For one image and a small map, ATen would run it as im2col and MKL's SGEMM. Elsewhere (CUDA,
    other dtypes) it is the plain Conv2d. ``aten.mkldnn_convolution``'s backward goes through ATen's
    heuristic again, so training uses :class:`OneDNNConv1x1` instead.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or isinstance(self.padding, str):
            return super().forward(x)
        return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, list(self.padding), list(self.stride),
                                                 list(self.dilation), self.groups)


class OneDNNConv1x1(nn.Conv2d):
    """An unstrided, undilated 1x1 Conv2d whose forward and backward run oneDNN's kernels on CPU fp32.

    A 1x1 kernel has no taps to space apart, so dilation 2 computes the same function (same output
    shape, same products); it is also the one argument that makes ATen's heuristic choose oneDNN for
    both passes. It is passed only where the heuristic would otherwise choose MKL (one thread, fewer
    than 16 images), so every other case, 2-thread training included, runs exactly as before.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] < _ATEN_1X1_MIN_BATCH
                and torch.get_num_threads() == 1):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, (2, 2), self.groups)
        return super().forward(x)


def is_plain_conv(m: nn.Module) -> bool:
    """A Conv2d of torch's or of this module (not a DCN or another subclass), zero-padded."""
    return type(m) in (nn.Conv2d, OneDNNConv1x1) and m.padding_mode == "zeros"


def onednn_1x1(model: nn.Module) -> nn.Module:
    """Make every unstrided, undilated 1x1 Conv2d of ``model`` a :class:`OneDNNConv1x1` (in place:
    same parameters, buffers and state-dict keys, another forward); returns ``model``."""
    for m in model.modules():
        if (type(m) is nn.Conv2d and m.padding_mode == "zeros" and tuple(m.kernel_size) == (1, 1)
                and tuple(m.stride) == (1, 1) and tuple(m.dilation) == (1, 1)):
            m.__class__ = OneDNNConv1x1
    return model


@register_flop_formula(torch.ops.aten.mkldnn_convolution)
def _mkldnn_convolution_flop(x_shape, w_shape, _bias, _padding, _stride, _dilation, _groups, *args,
                             out_shape=None, **kwargs) -> int:
    # FlopCounterMode knows aten.convolution, not the oneDNN op it lowers to: without this the
    # benchmark's floors would count the inference path's convolutions as free
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)
