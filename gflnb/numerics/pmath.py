"""Elementwise sqrt, log and exp that give the same bits on every CPU.

On contiguous CPU tensors ATen computes ``torch.sqrt``, ``log`` and ``exp`` (and ``erf``, ``atan``)
with MKL's VML (aten/src/ATen/cpu/vml.h), and MKL picks its code path by CPU vendor: under an AMD
CPUID its float32 sqrt is an ulp off for about one value in six where the Intel path gives IEEE's,
and ``MKL_CBWR=COMPATIBLE`` pins log and exp but not sqrt (experiments/portability/README.md).
``MKL_VERBOSE`` logs no VML call, so only the numbers show it.

These functions compute in float64 with ATen's own kernels (``sqrtpd`` and divisions; Sleef's log2
and exp2, built for the AVX2 cap), then round to the input's dtype:

* ``sqrt`` is IEEE's correctly rounded square root: ``1 / rsqrt(x)`` in float64 is within about 2
  ulps of a double of the exact root, and the root of a float32 never lies that close to a
  rounding midpoint, so the float32 it rounds to is the correctly rounded one;
* ``log`` and ``exp`` equal the correctly rounded float32 in every one of 500,000 values tested
  (the float64 result is within a few ulps of a double).

float64 inputs are computed in float64 (within 2 ulps). On CUDA these are torch's own functions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LN2 = math.log(2.0)
LOG2E = 1.0 / LN2


def _wide(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.double()


def sqrt(x: Tensor) -> Tensor:
    if x.device.type != "cpu":
        return torch.sqrt(x)
    return torch.reciprocal(torch.rsqrt(_wide(x))).to(x.dtype)


def log(x: Tensor) -> Tensor:
    if x.device.type != "cpu":
        return torch.log(x)
    return (torch.log2(_wide(x)) * LN2).to(x.dtype)


def exp(x: Tensor) -> Tensor:
    if x.device.type != "cpu":
        return torch.exp(x)
    return torch.exp2(_wide(x) * LOG2E).to(x.dtype)
