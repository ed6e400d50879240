"""Code paths a GPU machine uses, exercised on CPU: autocast dtype sanity and DDP under torchrun."""
import json
import os
import subprocess
import sys

import torch

from gflnb import build_model
from gflnb.data.synth import dataset_paths, make_dataset


def test_autocast_losses_stay_float32_and_finite():
    torch.manual_seed(0)
    model = build_model("gfl_cpu_demo", num_classes=3)
    x = torch.randn(2, 3, 96, 128)
    metas = [dict(img_shape=(96, 128), pad_shape=(96, 128), scale_factor=(1.0, 1.0))] * 2
    targets = [dict(boxes=torch.tensor([[10., 12., 60., 70.]]), labels=torch.tensor([1])),
               dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        cls, reg = model(x)
        assert cls[0].dtype == torch.bfloat16 and reg[0].dtype == torch.float32  # the head casts the distributions
        losses = model.bbox_head.loss(cls, reg, targets, metas)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        dets = model.predict(x, metas)
    assert dets[0]["boxes"].shape[1] == 4 and dets[0]["labels"].dtype == torch.int64


def test_ddp_under_torchrun_two_cpu_processes(tmp_path):
    make_dataset(tmp_path / "d", num_train=8, num_val=2, seed=2, progress=False)
    ann, imgs = dataset_paths(tmp_path / "d", "train")
    work = tmp_path / "w"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "gflnb", "train", "--config", "gfl_cpu_demo", "--train-ann", str(ann), "--train-images", str(imgs),
           "--work-dir", str(work), "--no-progress", "--max-iters", "3", "--set", "batch_size=2",
           "--set", "warmup_iters=2", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    log = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in log] == [1, 2, 3]  # rank 0 logs, each step counts once
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in log)
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["meta"]["global_iter"] == 3
    assert not any(k.startswith("module.") for k in ck["state_dict"])
