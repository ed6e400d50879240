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

MKL is kept out of the numbers altogether. It picks its code path by CPU vendor, and its
reproducibility switch (``MKL_CBWR``) does not pin it on non-Intel CPUs, so the same SGEMV gave AMD
and Intel different last bits at chapter 3's first step. So the Integral is a product and an ATen
sum (gflnb/boxes.py); the inference path runs every convolution through oneDNN (gflnb/model/fuse.py),
where ATen would run a one-image small convolution as MKL's SGEMM; single-threaded 1x1 convs,
which ATen runs the same way, go to oneDNN too (gflnb/numerics/conv.py); and sqrt, log and exp, which ATen
computes with MKL's VML, come from gflnb/numerics/pmath.py. tests/test_portable.py checks that training
and ``GFL.predict`` make no MKL call, and that a training step gives the same bytes for every op
under an emulated AMD and an emulated Intel CPUID (experiments/portability/README.md).

The number of threads changes the numbers too: oneDNN splits a convolution's work, and so orders
its sums, by thread count (the demo's first training loss differs in the 6th digit between 1 and 2
threads, and 20 steps later in the 3rd). So torch runs PORTABLE_THREADS threads (this project's
machines have 2 cores) unless ``OMP_NUM_THREADS`` is set, or ``GFLNB_THREADS=N`` asks for N
(``GFLNB_THREADS=0``: torch's default, all cores, and that machine's own numbers).
"""
from __future__ import annotations

import os
import platform

PORTABLE_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
                "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
NATIVE_VARIABLE = "GFLNB_NATIVE_ISA"
PORTABLE_THREADS = 2
THREADS_VARIABLE = "GFLNB_THREADS"


def wants_native() -> bool:
    return os.environ.get(NATIVE_VARIABLE, "0") not in ("", "0")


def threads() -> int:
    """The torch thread count gflnb asks for (0: torch's own choice)."""
    if "OMP_NUM_THREADS" in os.environ:
        return int(os.environ["OMP_NUM_THREADS"])
    return int(os.environ.get(THREADS_VARIABLE, PORTABLE_THREADS))


def apply() -> dict[str, str]:
    """Put the portable kernel choice (x86-64 only) and thread count into ``os.environ``; returns
    what it set."""
    set_now = {}
    if "OMP_NUM_THREADS" not in os.environ and threads() > 0:
        set_now["OMP_NUM_THREADS"] = str(threads())
    if not wants_native() and platform.machine().lower() in ("x86_64", "amd64"):
        set_now.update({k: v for k, v in PORTABLE_ISA.items() if k not in os.environ})
    os.environ.update(set_now)
    return set_now


def check() -> None:
    """Warn when torch already runs other kernels than asked (it chose them before gflnb was imported)."""
    import warnings

    import torch
    n = threads()
    if n > 0 and torch.get_num_threads() != n:  # torch was imported first, and sized its pool by itself
        torch.set_num_threads(n)
    want = os.environ.get("ATEN_CPU_CAPABILITY")
    if want and not wants_native() and torch.backends.cpu.get_cpu_capability().lower() != want.lower():
        warnings.warn(f"torch runs {torch.backends.cpu.get_cpu_capability()} kernels, not the portable "
                      f"{want.upper()} ones (it picked them before gflnb was imported): numbers may differ from "
                      f"other machines'. Import gflnb first, or set {', '.join(PORTABLE_ISA)} in the environment.")
