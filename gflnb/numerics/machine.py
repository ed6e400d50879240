"""What a timing was measured on: CPU model, the instruction set torch's kernels use, torch version.

Every timing gflnb prints or writes carries this, since the same command runs 3-4x slower on one
machine of a kind than on another.
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from typing import Any

import torch

# (vendor, family, model) -> microarchitecture, for the CPUs seen on this project's machines
_UARCH = {("AuthenticAMD", 25, 1): "Zen 3", ("AuthenticAMD", 25, 17): "Zen 4"}
# Environment variables that cap the kernels' instruction set (gflnb/numerics/portable.py sets them to AVX2)
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                k, _, v = line.partition(":")
                info[k.strip()] = v.strip()
    except OSError:
        pass
    return info


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """``AMD EPYC (family 25 model 17, Zen 4; AVX-512, bf16)``, or what the platform module knows."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    try:
        fam, mod = int(info["cpu family"]), int(info["model"])
    except (KeyError, ValueError):
        return name
    uarch = _UARCH.get((info.get("vendor_id", ""), fam, mod))
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    isa += ", bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else ""
    return f"{name} (family {fam} model {mod}{', ' + uarch if uarch else ''}; {isa})"


def machine_info() -> dict[str, Any]:
    """The machine a measurement ran on, as JSON-ready fields."""
    capped = {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ}
    return dict(cpu=cpu_model(), isa=torch.backends.cpu.get_cpu_capability(), torch=torch.__version__,
                threads=torch.get_num_threads(), isa_capped_by=capped or None)


def describe(info: dict[str, Any] | None = None) -> str:
    """One line: ``AMD EPYC (family 25 model 17, Zen 4; AVX-512, bf16), AVX2 kernels (capped), torch 2.14.1, 2 threads``."""
    m = info or machine_info()
    capped = " (capped)" if m.get("isa_capped_by") else ""
    return f"{m['cpu']}, {m['isa']} kernels{capped}, torch {m['torch']}, {m['threads']} threads"
