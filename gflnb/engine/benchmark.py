"""Batch-1 inference speed, measured like the seed's footnote 4: warm-up, many runs, median."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from ..config import get_config
from ..model.detector import GFL, build_model
from ..numerics import conv  # noqa: F401  (registers aten.mkldnn_convolution's FLOP formula, which flops() counts)
from ..numerics.machine import machine_info
from ..losses import distribution_focal_loss, giou_loss, quality_focal_loss
from ..data.preprocess import pad_shape

ROOT = Path(__file__).resolve().parents[2]  # the repository: gflnb/<role>/<module>.py


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def med(xs):
    return statistics.median(xs)


def spread(xs):
    """The interquartile range ``[q1, q3]``."""
    s = sorted(xs)
    return [s[len(s) // 4], s[(3 * len(s)) // 4]]


INFERENCE_PATHS = ("evaluate", "nhwc", "plain")


def inference_setup(config: str, shape: tuple[int, int], device: str = "cpu", checkpoint: Optional[str] = None,
                    path: str = "evaluate"):
    """An eval-mode model, one padded random image and its meta.

    ``path``: ``evaluate`` is ``GFL.predict`` as users call it, in eval mode: its inference path
    (BN folded, NHWC on CPU), what ``gflnb evaluate`` and the notebooks run; ``nhwc`` the model as
    built in NHWC, BN not folded; ``plain`` the model as built (NCHW, BN not folded). Call the
    model's ``predict`` with ``fast=(path == "evaluate")``.
    """
    if path not in INFERENCE_PATHS:
        raise ValueError(f"inference path must be one of {INFERENCE_PATHS}, not {path!r}")
    dev = torch.device(device)
    cfg = get_config(config, pretrained_backbone=False)
    model = GFL(cfg).eval().to(dev)
    if checkpoint:
        from .checkpoint import load_checkpoint
        load_checkpoint(model, checkpoint)
    if path == "evaluate":
        model.inference_net(dev)  # built here, not in the first timed call
    elif path == "nhwc":
        model.use_channels_last()
    ph, pw = pad_shape(shape, cfg.size_divisor)
    x = torch.randn(1, 3, ph, pw, generator=torch.Generator().manual_seed(0)).to(dev)
    meta = [dict(img_shape=tuple(shape), pad_shape=(ph, pw), scale_factor=(1.0, 1.0))]
    return model, x, meta


@torch.no_grad()
def benchmark_inference(config: str = "gfl_r50_fpn_1x_coco", shape: tuple[int, int] = (800, 1333),
                        device: str = "cpu", warmup: int = 3, runs: int = 20, checkpoint: Optional[str] = None,
                        amp: bool = False, path: str = "evaluate") -> dict[str, Any]:
    """Median latency of ``predict`` (forward and post-processing) on one padded image."""
    dev = torch.device(device)
    model, x, meta = inference_setup(config, shape, device, checkpoint, path)
    times = []
    for i in range(warmup + runs):
        _sync(dev)
        t = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp and dev.type == "cuda"):
            model.predict(x, meta, rescale=False, fast=path == "evaluate")
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    q1, q3 = spread(times)
    return dict(config=config, shape=list(shape), padded=list(meta[0]["pad_shape"]), device=str(dev),
                device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                runs=runs, median_s=med(times), q1_s=q1, q3_s=q3, min_s=min(times),
                fps=1.0 / med(times), amp=amp, path=path, **machine_info())


# ------------------------------------------------------------------ the comparison suite (benchmarks/run.py)
def flops(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def rate_probes() -> dict:
    """Ops that run at the machine's best fp32 rate: a large 3x3 conv (the dominant op of backbone
    and head) and a large matmul. Each is ``(fn, flops)``; timed interleaved with the models."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 256, 100, 168)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return {"probe: conv 3x3 256ch 100x168": ((lambda: conv(x)), 2 * 256 * 256 * 9 * 100 * 168),
            "probe: matmul 2048^2": ((lambda: a @ b), 2 * 2048 ** 3)}


def attained_rate(probe_times: dict, probes: dict) -> dict:
    """GFLOP/s of each probe from its median time, and the best of them (the floor's rate).

    The median, as for the models: a rate from the fastest probe run against a model's median
    would charge the model for the machine's jitter.
    """
    rates = {k: probes[k][1] / med(v) / 1e9 for k, v in probe_times.items()}
    return dict(rates, best=max(rates.values()))


# ------------------------------------------------------------------ models
# "gflnb" is the path gflnb evaluate runs; the other rows show what each of its two steps buys.
GFLNB_ROWS = {"gflnb": "evaluate", "gflnb (NHWC, BN not folded)": "nhwc", "gflnb (as built: NCHW, BN)": "plain"}


def gflnb_infer(shape, path):
    model, x, meta = inference_setup("gfl_r50_fpn_1x_coco", shape, path=path)
    fast = path == "evaluate"
    net = model.inference_net() if fast else model
    return (lambda: model.predict(x, meta, rescale=False, fast=fast)), (lambda: net(x))


def tv_infer(name, shape):
    from torchvision.models import detection as D
    ctor = {"fcos": D.fcos_resnet50_fpn, "retinanet": D.retinanet_resnet50_fpn}[name]
    model = ctor(weights=None, weights_backbone=None, num_classes=80, min_size=min(shape), max_size=max(shape),
                 score_thresh=0.05).eval()
    x = [torch.rand(3, *shape)]
    return (lambda: model(x)), (lambda: model(x))


def time_interleaved(fns: dict, rounds: int, warmup: int = 1, no_grad: bool = True) -> dict:
    """Seconds per call of each function, the functions alternating round by round."""
    times = {k: [] for k in fns}
    with torch.set_grad_enabled(not no_grad):
        for _ in range(warmup):
            for f in fns.values():
                f()
        for _ in range(rounds):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    return times


ONNX_ROW = "gflnb ONNX (onnxruntime, NMS in numpy)"


def _has_onnxruntime() -> bool:
    import importlib.util
    return importlib.util.find_spec("onnxruntime") is not None


def bench_inference(shape, rounds, probes) -> tuple[dict, dict]:
    """Latency and FLOPs of each model at ``shape``, with the rate probes in the same rounds."""
    fns, fwd = {}, {}
    for name, path in GFLNB_ROWS.items():
        fns[name], fwd[name] = gflnb_infer(shape, path)
    if _has_onnxruntime():  # the exported graph, decode and NMS post-processing included, same weights' shape
        from .export import ort_predict_fn
        model, _, _ = inference_setup("gfl_r50_fpn_1x_coco", shape, path="plain")
        fns[ONNX_ROW], fwd[ONNX_ROW] = ort_predict_fn(model, shape), fwd["gflnb"]  # same FLOPs as the torch path
    for n in ("fcos", "retinanet"):
        fns[f"torchvision {n}"], fwd[f"torchvision {n}"] = tv_infer(n, shape)
    times = time_interleaved({**fns, **{k: f for k, (f, _) in probes.items()}}, rounds)
    out = {}
    with torch.no_grad():
        for k in fns:
            out[k] = dict(median_s=med(times[k]), iqr_s=spread(times[k]), gflop=flops(fwd[k]) / 1e9)
    return out, {k: times[k] for k in probes}


def add_floors(results: dict, gflops_per_s: float) -> None:
    for r in results.values():
        r["floor_s"] = r["gflop"] / gflops_per_s
        r["x_floor"] = r["median_s"] / r["floor_s"]


def bench_train_step(rounds, size: int = 512):
    """One SGD step on 2 images of ``size`` x ``size``: gflnb as the engine trains R-50 (NCHW), in NHWC, and FCOS."""
    from torchvision.models import detection as D
    torch.manual_seed(0)
    boxes = torch.tensor([[40., 60., 200., 260.], [300., 100., 480., 400.], [10., 10., 60., 50.]])
    labels = torch.tensor([3, 17, 42])
    metas = [dict(img_shape=(size, size), pad_shape=(size, size), scale_factor=(1.0, 1.0))] * 2
    tg = [dict(boxes=boxes, labels=labels)] * 2
    x = torch.randn(2, 3, size, size)

    def gfl_step(nhwc):
        model = build_model("gfl_r50_fpn_1x_coco", pretrained_backbone=False).train()
        xx = x
        if nhwc:  # R-50's channel counts do not hit the small-channel NHWC backward crash
            model = model.to(memory_format=torch.channels_last)
            xx = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

        def step():
            opt.zero_grad()
            sum(model.loss(xx, tg, metas).values()).backward()
            opt.step()
        return step

    fcos = D.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=80, min_size=size, max_size=size).train()
    opt_f = torch.optim.SGD([p for p in fcos.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    imgs = [torch.rand(3, size, size) for _ in range(2)]

    def step_f():
        opt_f.zero_grad()
        sum(fcos(imgs, tg).values()).backward()
        opt_f.step()

    times = time_interleaved({"gflnb": gfl_step(False), "gflnb (NHWC)": gfl_step(True), "torchvision fcos": step_f},
                             rounds, no_grad=False)
    return {k: dict(median_s=med(v), iqr_s=spread(v)) for k, v in times.items()}


ATSS_CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from gflnb.assigner import atss_assign
from gflnb.boxes import box_iou, featmap_sizes_for, grid_anchors
n, mode = int(sys.argv[2]), sys.argv[3]
sizes = featmap_sizes_for((800, 1344), [8, 16, 32, 64, 128])
levels = grid_anchors(sizes, [8, 16, 32, 64, 128])
anchors = torch.cat(levels)
g = torch.Generator().manual_seed(n)
xy = torch.rand(n, 2, generator=g) * torch.tensor([1200., 700.])
wh = 8 + torch.rand(n, 2, generator=g) * 300
gts = torch.cat([xy, xy + wh], 1)
labels = torch.zeros(n, dtype=torch.long)
def dense():
    iou = box_iou(anchors, gts)  # what mmdet holds: every anchor with every gt, plus the distances
    d = torch.cdist(((anchors[:, :2] + anchors[:, 2:]) / 2), (gts[:, :2] + gts[:, 2:]) / 2)
    return iou.sum() + d.sum()
fn = (lambda: atss_assign(anchors, [len(l) for l in levels], gts, labels)) if mode == "gflnb" else dense
import weakref
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
class LiveBytes(TorchDispatchMode):
    # peak bytes of the live tensor storages made inside the mode; RSS would add the allocator's
    # heap growth and fragmentation to what the code actually holds
    def __init__(self):
        super().__init__(); self.live = self.peak = 0; self.sizes = {}
    def _free(self, key):
        self.live -= self.sizes.pop(key, 0)
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()  # its Python object lives exactly as long as the storage
                key = id(st)
                if key not in self.sizes and st.nbytes():
                    self.sizes[key] = st.nbytes(); self.live += st.nbytes(); self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self._free, key)
        return out
fn()
with LiveBytes() as mem:
    fn()
extra = mem.peak / 2**20
ts = []
for _ in range(6):
    t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
print(json.dumps(dict(n=n, mode=mode, time_s=min(ts), extra_mb=extra, anchors=len(anchors))))
"""


def bench_atss(counts):
    out = []
    for n in counts:
        for mode in ("gflnb", "dense"):
            # a fresh process per point, so no point inherits the previous one's allocator state
            r = subprocess.run([sys.executable, "-c", ATSS_CHILD, str(ROOT), str(n), mode], capture_output=True,
                               text=True, check=True)
            out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def bench_losses(rounds):
    from torchvision.ops import sigmoid_focal_loss
    out = {}
    for imgs in (1, 8):
        n = 22400 * imgs
        g = torch.Generator().manual_seed(imgs)
        x = torch.randn(n, 80, generator=g)
        labels = torch.full((n,), 80)
        labels[:: 50] = torch.randint(0, 80, (len(labels[:: 50]),), generator=g)
        scores = torch.rand(n, generator=g)
        onehot = torch.zeros(n, 80)
        pos = labels < 80
        onehot[pos, labels[pos]] = 1

        def qfl():
            xx = x.clone().requires_grad_()
            quality_focal_loss(xx, labels, scores).sum().backward()

        def fl():
            xx = x.clone().requires_grad_()
            sigmoid_focal_loss(xx, onehot, reduction="sum").backward()

        p = n // 50
        zd = torch.randn(p * 4, 17, generator=g)
        td = torch.rand(p * 4, generator=g) * 15.9
        b1 = torch.rand(p, 4, generator=g).sort(1).values[:, [0, 1, 2, 3]] * 100
        b1 = torch.stack([b1[:, 0], b1[:, 1], b1[:, 0] + 5 + b1[:, 2], b1[:, 1] + 5 + b1[:, 3]], 1)
        b2 = b1 + torch.randn(p, 4, generator=g)

        def dfl():
            zz = zd.clone().requires_grad_()
            distribution_focal_loss(zz, td).sum().backward()

        def giou():
            bb = b1.clone().requires_grad_()
            giou_loss(bb, b2).sum().backward()

        times = time_interleaved({"QFL": qfl, "sigmoid_focal_loss": fl, "DFL": dfl, "GIoU": giou}, rounds,
                                 no_grad=False)
        out[f"{imgs} image(s)"] = {k: dict(median_s=med(v), iqr_s=spread(v)) for k, v in times.items()}
    return out


def markdown(res) -> str:
    probes = ", ".join(f"{k.removeprefix('probe: ')} {v:.0f}" for k, v in res.get("rates", {}).items() if k != "best")
    L = [f"# gflnb benchmarks\n\n{res['machine']}; torchvision {res['torchvision']}; attained fp32 "
         f"rate {res['conv_gflops']:.0f} GFLOP/s, the best of the probes' medians ({probes} GFLOP/s), timed in "
         f"the same interleaved rounds as the models. The floor of each latency is its FLOPs at this rate.\n"]
    for shape, rows in res["inference"].items():
        L.append(f"\n## Inference, batch 1, {shape}\n\n| model | median (s) | IQR (s) | GFLOP | x floor | vs FCOS |\n|---|---|---|---|---|---|")
        fc = rows["torchvision fcos"]["median_s"]
        for k, r in rows.items():
            L.append(f"| {k} | {r['median_s']:.3f} | {r['iqr_s'][0]:.3f}-{r['iqr_s'][1]:.3f} | {r['gflop']:.1f} | "
                     f"{r['x_floor']:.2f} | {r['median_s'] / fc:.2f} |")
    t = res["train_step"]
    L.append(f"\n## Training step, batch 2 of {res.get('train_size', 512)}x{res.get('train_size', 512)}\n\n| model | median (s) | IQR (s) | vs FCOS |\n|---|---|---|---|")
    for k, r in t.items():
        L.append(f"| {k} | {r['median_s']:.3f} | {r['iqr_s'][0]:.3f}-{r['iqr_s'][1]:.3f} | "
                 f"{r['median_s'] / t['torchvision fcos']['median_s']:.2f} |")
    L.append("\n## ATSS on 22,400 anchors (peak live tensor memory)\n\n| gts | gflnb time (s) | gflnb peak MB | dense time (s) | dense peak MB |\n|---|---|---|---|---|")
    by = {}
    for r in res["atss"]:
        by.setdefault(r["n"], {})[r["mode"]] = r
    for n, r in sorted(by.items()):
        L.append(f"| {n} | {r['gflnb']['time_s']:.4f} | {r['gflnb']['extra_mb']:.1f} | {r['dense']['time_s']:.4f} | "
                 f"{r['dense']['extra_mb']:.1f} |")
    L.append("\n## Losses, forward + backward (22,400 anchors x 80 classes per image)\n\n| size | QFL (s) | "
             "sigmoid_focal_loss (s) | QFL / focal | DFL (s) | GIoU (s) |\n|---|---|---|---|---|---|")
    for size, r in res["losses"].items():
        L.append(f"| {size} | {r['QFL']['median_s']:.4f} | {r['sigmoid_focal_loss']['median_s']:.4f} | "
                 f"{r['QFL']['median_s'] / r['sigmoid_focal_loss']['median_s']:.2f} | {r['DFL']['median_s']:.4f} | "
                 f"{r['GIoU']['median_s']:.4f} |")
    return "\n".join(L) + "\n"


def run_suite(quick: bool = False, progress=print) -> dict:
    """Every comparison of the suite; ``quick`` is a smoke run (inference at 512x512 only, a
    training step at 256x256, few rounds, up to 100 gts)."""
    from ..numerics.machine import describe, machine_info
    torch.manual_seed(0)
    rounds = 2 if quick else 7
    info = machine_info()
    res = dict(machine=describe(info), machine_info=info, torch=torch.__version__,
               torchvision=torchvision.__version__, threads=torch.get_num_threads(), quick=quick)
    res["inference"] = {}
    probes = rate_probes()
    probe_times: dict = {k: [] for k in probes}
    for s in [(512, 512)] if quick else [(800, 1333), (512, 512)]:
        progress(f"inference {s[0]}x{s[1]} ...")
        res["inference"][f"{s[0]}x{s[1]}"], pt = bench_inference(s, rounds, probes)
        for k, v in pt.items():
            probe_times[k] += v
    res["rates"] = attained_rate(probe_times, probes)
    res["conv_gflops"] = res["rates"]["best"]
    for r in res["inference"].values():
        add_floors(r, res["conv_gflops"])
    progress("training step ...")
    res["train_size"] = 256 if quick else 512
    res["train_step"] = bench_train_step(max(2, rounds // 2), res["train_size"])
    progress("ATSS ...")
    res["atss"] = bench_atss([10, 100] if quick else [1, 10, 100, 500, 1000, 2000])
    progress("losses ...")
    res["losses"] = bench_losses(rounds)
    return res
