"""Portable numerics: the same CPU kernels, and so the same numbers, on every x86-64 machine.

torch picks its CPU kernels by instruction set: AVX-512 where the CPU has it, AVX2 elsewhere. The
two sum in different orders, and a detector trained from scratch amplifies last-bit differences:
the 12-epoch demo gave AP 49.6 with the AVX-512 kernels and 53.9 with the AVX2 ones on the same
machine, data and seed. So gflnb runs the AVX2 kernels (ATen, oneDNN, MKL), which every x86-64 CPU
of this project's machines has, unless ``GFLNB_NATIVE_ISA=1`` asks for the CPU's best (faster on
AVX-512 CPUs: about 9% on the demo's training step; needed for bf16 autocast).

The variables must be in the environment before torch picks its kernels, on first use: ``import
gflnb`` sets them (before importing torch itself), and child processes (papermill kernels,
torchrun workers, DataLoader workers) inherit them. A variable the user set is left as it is.
OpenCV, which decodes and resizes the images, is not pinned: its AVX-512 and AVX2 paths gave
byte-identical synthetic images and training batches.
"""
from __future__ import annotations

import os
import platform

PORTABLE_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
                "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
NATIVE_VARIABLE = "GFLNB_NATIVE_ISA"


def wants_native() -> bool:
    return os.environ.get(NATIVE_VARIABLE, "0") not in ("", "0")


def apply() -> dict[str, str]:
    """Put the portable kernel choice into ``os.environ`` (x86-64 only); returns what it set."""
    if wants_native() or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    set_now = {k: v for k, v in PORTABLE_ISA.items() if k not in os.environ}
    os.environ.update(set_now)
    return set_now


def check() -> None:
    """Warn when torch already runs other kernels than asked (it chose them before gflnb was imported)."""
    import warnings

    import torch
    want = os.environ.get("ATEN_CPU_CAPABILITY")
    if want and not wants_native() and torch.backends.cpu.get_cpu_capability().lower() != want.lower():
        warnings.warn(f"torch runs {torch.backends.cpu.get_cpu_capability()} kernels, not the portable "
                      f"{want.upper()} ones (it picked them before gflnb was imported): numbers may differ from "
                      f"other machines'. Import gflnb first, or set {', '.join(PORTABLE_ISA)} in the environment.")
