"""Batch-1 inference speed, measured like the seed's footnote 4: warm-up, many runs, median."""
from __future__ import annotations

import statistics
import time
from typing import Any, Optional

import torch

from .config import get_config
from .detector import GFL
from .preprocess import pad_shape


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def benchmark_inference(config: str = "gfl_r50_fpn_1x_coco", shape: tuple[int, int] = (800, 1333),
                        device: str = "cpu", warmup: int = 3, runs: int = 20, checkpoint: Optional[str] = None,
                        amp: bool = False, channels_last: bool = False) -> dict[str, Any]:
    """Median latency of ``predict`` (forward and post-processing) on one padded image."""
    dev = torch.device(device)
    cfg = get_config(config, pretrained_backbone=False)
    model = GFL(cfg).eval().to(dev)
    if checkpoint:
        from .checkpoint import load_checkpoint
        load_checkpoint(model, checkpoint)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ph, pw = pad_shape(shape, cfg.size_divisor)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, ph, pw, generator=g).to(dev)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    meta = [dict(img_shape=tuple(shape), pad_shape=(ph, pw), scale_factor=(1.0, 1.0))]
    times = []
    for i in range(warmup + runs):
        _sync(dev)
        t = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp and dev.type == "cuda"):
            model.predict(x, meta, rescale=False)
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    med = statistics.median(times)
    q1, q3 = times[len(times) // 4], times[(3 * len(times)) // 4]
    return dict(config=config, shape=list(shape), padded=[ph, pw], device=str(dev),
                device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                threads=torch.get_num_threads(), runs=runs, median_s=med, q1_s=q1, q3_s=q3, min_s=times[0],
                fps=1.0 / med, amp=amp, channels_last=channels_last, torch=torch.__version__)
