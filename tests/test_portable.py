"""Portable numerics (gflnb/numerics/portable.py): the AVX2 kernels on every x86-64 CPU unless GFLNB_NATIVE_ISA=1."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from gflnb.numerics.portable import PORTABLE_ISA

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the cap is for x86-64 CPUs")  # every machine of this project is one

CAPABILITY = "import torch; print(torch.backends.cpu.get_cpu_capability())"
# A few training steps of a small conv net: sums, convs (oneDNN), GEMMs (MKL), softmax; prints the
# exact bits of the final weights.
STEPS = """
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.GroupNorm(4, 16), torch.nn.ReLU(),
                          torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10))
opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
for _ in range(5):
    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x).log_softmax(1), y).backward(); opt.step()
print(torch.cat([p.detach().flatten() for p in net.parameters()]).double().sum().item().hex())
"""


def _run(code: str, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in PORTABLE_ISA and k not in ("GFLNB_NATIVE_ISA", "OMP_NUM_THREADS", "GFLNB_THREADS")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True)


def test_import_gflnb_caps_the_kernels_at_avx2():
    assert _run("import gflnb; " + CAPABILITY).stdout.strip() == "AVX2"


def test_native_lifts_the_cap():
    native = _run(CAPABILITY).stdout.strip()  # what torch picks on its own here
    assert _run("import gflnb; " + CAPABILITY, GFLNB_NATIVE_ISA="1").stdout.strip() == native


def test_a_variable_the_user_set_is_kept():
    assert _run("import gflnb; " + CAPABILITY, ATEN_CPU_CAPABILITY="default").stdout.strip() == "DEFAULT"


def test_torch_that_chose_its_kernels_first_is_warned_about():
    code = ("import os; os.environ['ATEN_CPU_CAPABILITY'] = 'default'; import torch; "
            "torch.backends.cpu.get_cpu_capability(); del os.environ['ATEN_CPU_CAPABILITY']; import gflnb")
    err = _run(code).stderr
    assert "torch runs DEFAULT kernels, not the portable AVX2 ones" in err


def test_the_default_computes_what_the_forced_avx2_kernels_compute():
    forced = _run(STEPS, **PORTABLE_ISA).stdout
    assert _run("import gflnb\n" + STEPS).stdout == forced


THREADS = "import gflnb, torch; print(torch.get_num_threads())"


def test_the_thread_count_is_fixed_unless_asked_otherwise():
    from gflnb.numerics.portable import PORTABLE_THREADS
    assert _run(THREADS).stdout.strip() == str(PORTABLE_THREADS)
    assert _run(THREADS, OMP_NUM_THREADS="1").stdout.strip() == "1"  # as the sweep's commands set it
    assert _run(THREADS, GFLNB_THREADS="3").stdout.strip() == "3"
    own = _run("import torch; print(torch.get_num_threads())").stdout.strip()
    assert _run(THREADS, GFLNB_THREADS="0").stdout.strip() == own
    # torch imported first: gflnb still sets the pool's size
    assert _run("import torch; torch.set_num_threads(1); " + THREADS).stdout.strip() == str(PORTABLE_THREADS)


# One training step of the demo detector (forward, the three losses, backward) on a batch of two (the
# presets train 2-8 images per process), then GFL.predict on one image, in a child process so that
# the verbose variables are read when MKL and oneDNN load.
TRAIN_STEP = """
import gflnb, torch
torch.manual_seed(0)
m = gflnb.build_model("gfl_cpu_demo", **OVERRIDES).train()
meta = dict(img_shape=(128, 128), pad_shape=(128, 128), scale_factor=(1.0, 1.0, 1.0, 1.0), ori_shape=(128, 128))
box = dict(boxes=torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 40.0, 120.0, 100.0]]), labels=torch.tensor([1, 3]))
losses = m.loss(torch.randn(2, 3, 128, 128), [box, box], [meta, meta])
sum(losses.values()).backward()
print("STEP-DONE", flush=True)
m.eval().predict(torch.randn(1, 3, 128, 128), [meta])
print("PREDICT-DONE", flush=True)
"""
INTEL_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference_runs" / "chapter3_intel_xeon_avx2.json"


@pytest.mark.parametrize("threads", ["1", "2"], ids=["1thread", "2threads"])
@pytest.mark.parametrize("overrides", [{}, {"quality": "dgqp"}], ids=["gfl", "dgqp"])
def test_training_and_predict_make_no_mkl_call(overrides, threads):
    # MKL picks its code path by CPU vendor, and MKL_CBWR cannot pin it on non-Intel CPUs: its SGEMV
    # in the Integral was the one term that differed between AMD and Intel at the first step, one
    # image's small convolutions ran as its SGEMM, and so did every 1x1 conv (the FPN's laterals) of
    # a single-threaded step, as the sweep trains (gflnb/numerics/conv.py). With no MKL call left, training
    # and GFL.predict run only ATen's capped kernels and oneDNN's.
    out = _run(f"OVERRIDES = {overrides!r}\n" + TRAIN_STEP, MKL_VERBOSE="1", OMP_NUM_THREADS=threads)
    lines = (out.stdout + out.stderr).splitlines()
    calls = [ln.split("(")[0] for ln in lines if ln.startswith("MKL_VERBOSE") and "oneMKL" not in ln]
    assert "STEP-DONE" in lines and "PREDICT-DONE" in lines and calls == []


def test_a_training_step_runs_the_avx2_onednn_kernels_the_intel_run_used():
    # The Intel reference run's two training steps (chapter 3's model) used these implementations;
    # the demo's step must use AVX2 ones of the same set on any machine (no AVX-512 or AMX kernel)
    out = _run("OVERRIDES = {}\n" + TRAIN_STEP, ONEDNN_VERBOSE="1")
    impls = {",".join(ln.split(",")[5:8]) for ln in out.stdout.splitlines()
             if ln.startswith("onednn_verbose") and ",exec,cpu," in ln}
    convs = {i for i in impls if i.startswith("convolution,")}
    assert convs and all(":avx2" in i.split(",")[1] for i in convs)
    intel = set(json.loads(INTEL_REFERENCE.read_text())["onednn_implementations_in_two_training_steps"])
    assert convs <= intel, sorted(convs - intel)


# --------------------------------------------------------------- another vendor's CPU, emulated
# qemu-x86_64 (user mode) runs this machine's python under another CPUID: vendor, model, caches. Its
# arithmetic is IEEE's, so a kernel that computes differently there picks its path by what the CPU
# says it is, as MKL does by vendor. .ci/tools.sh installs it.
AMD, INTEL = "EPYC-Milan-v1", "Icelake-Server-v1"
# One training step of the demo detector (forward, losses, backward, fused AdamW) with every ATen op's
# output bytes digested (gflnb.numerics.optrace), printed one op a line.
DIGESTED_STEP = """
import gflnb, torch
from gflnb.numerics import optrace
torch.manual_seed(0)
m = gflnb.build_model("gfl_cpu_demo").train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)
meta = dict(img_shape=(128, 128), pad_shape=(128, 128), scale_factor=(1.0, 1.0, 1.0, 1.0), ori_shape=(128, 128))
box = dict(boxes=torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 40.0, 120.0, 100.0]]), labels=torch.tensor([1, 3]))
with optrace.Recorder() as rec:
    losses = m.loss(torch.randn(2, 3, 128, 128), [box, box], [meta, meta])
    sum(losses.values()).backward()
    opt.step()
print("\\n".join(op[0] + " " + " ".join(op[3]) for op in rec.ops))
"""
PLAIN_1X1 = ("import gflnb, torch; torch.manual_seed(0); x = torch.randn(2, 32, 16, 16); "
             "w = torch.randn(32, 32, 1, 1); print(torch.nn.functional.conv2d(x, w).double().sum().item().hex())")


def _emulated(cpu: str, code: str, **env) -> str:
    base = {k: v for k, v in os.environ.items()
            if k not in PORTABLE_ISA and k not in ("GFLNB_NATIVE_ISA", "OMP_NUM_THREADS", "GFLNB_THREADS")}
    return subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", code], env={**base, **env},
                          capture_output=True, text=True, check=True, timeout=1200).stdout


def test_the_emulation_shows_a_vendor_dependent_kernel():
    # the control: ATen's single-threaded 1x1 conv (im2col + MKL's SGEMM) differs between an AMD and
    # an Intel CPUID, so the test below would see a kernel that picks its path by vendor
    assert _emulated(AMD, PLAIN_1X1, OMP_NUM_THREADS="1") != _emulated(INTEL, PLAIN_1X1, OMP_NUM_THREADS="1")


@pytest.mark.parametrize("threads", ["1", "2"], ids=["1thread", "2threads"])
def test_a_training_step_gives_the_same_bytes_under_an_amd_and_an_intel_cpuid(threads):
    native = _run(DIGESTED_STEP, OMP_NUM_THREADS=threads).stdout.splitlines()
    assert len(native) > 300 and any(op.startswith("aten._fused_adamw_") for op in native)
    for cpu in (AMD, INTEL):
        emulated = _emulated(cpu, DIGESTED_STEP, OMP_NUM_THREADS=threads).splitlines()
        first = next((i for i, (a, b) in enumerate(zip(native, emulated)) if a != b), None)
        assert first is None and len(emulated) == len(native), \
            f"under {cpu}: op {first} differs: {native[first]} / {emulated[first]}"
