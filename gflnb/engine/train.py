"""The training engine: SGD/AdamW with warmup and step decay, AMP on CUDA, DDP under torchrun,
atomic checkpoints, exact resumption and a JSON-lines log of every iteration.

A run's state is (epoch, batches done in the epoch, global iteration, model, optimizer, AMP
scaler). The learning rate is a pure function of (epoch, global iteration) and the batch order a
pure function of (seed, epoch), so ``--resume`` continues exactly where the checkpoint left off.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from tqdm import tqdm

from . import dist
from .checkpoint import read_checkpoint, save_checkpoint
from ..config import GFLConfig, from_dict
from ..data.coco import CocoDetection, epoch_batches, make_loader
from ..files import atomic_write_text
from ..model.detector import GFL
from .ema import make_ema
from ..numerics.machine import machine_info


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainOptions:
    train_ann: str
    train_images: str
    work_dir: str
    val_ann: Optional[str] = None
    val_images: Optional[str] = None
    epochs: Optional[int] = None  # overrides the preset's
    max_minutes: Optional[float] = None  # stop (with a checkpoint) after this much training time
    max_iters: Optional[int] = None  # stop (with a checkpoint) after this many iterations in total
    resume: bool = False
    device: str = "auto"
    checkpoint_every: int = 0  # also checkpoint every N iterations (0: epoch ends and stops only)
    skip_bad_batches: int = 0  # tolerate this many non-finite losses (skipped, counted) before stopping
    progress: bool = True
    eval_batch_size: int = 8
    keep_epoch_checkpoints: bool = True
    deterministic: bool = False  # torch.use_deterministic_algorithms, for bit-exact reruns
    eval_every: int = 0  # also evaluate on the validation set every N epochs (0: only at the end)
    # a held-out test set, evaluated once, after the last epoch, with the weights the validation set saw:
    # large enough that sampling images is a small part of a run's spread (experiments/ablations/pilot)
    test_ann: Optional[str] = None
    test_images: Optional[str] = None
    tensorboard: bool = True  # also write log.jsonl's numbers as TensorBoard scalars (gflnb/engine/tblog.py)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but CUDA is not available here")
    return torch.device(device)


def lr_at(cfg: GFLConfig, base_lr: float, epoch: int, global_iter: int, budget_frac: Optional[float] = None) -> float:
    """Linear warmup by iteration (from ``warmup_ratio``) times step decay by epoch.

    Under a time budget, ``budget_frac`` is the fraction of it spent: a milestone also fires once
    that fraction reaches ``milestone / epochs``, so a slow machine still gets its low-lr phase
    before the budget stops the run.
    """
    f = 1.0
    if global_iter < cfg.warmup_iters:
        f = cfg.warmup_ratio + (1 - cfg.warmup_ratio) * global_iter / cfg.warmup_iters
    steps = sum(epoch >= m or (budget_frac is not None and budget_frac >= m / cfg.epochs) for m in cfg.milestones)
    return base_lr * f * cfg.gamma ** steps


def cpu_has_native_bf16() -> bool:
    """Whether torch's CPU kernels compute bf16 dot products natively here (without them bf16 is
    emulated, and slow): the CPU must have them, and the kernels must not be capped below AVX-512
    (gflnb's portable default caps them at AVX2: gflnb/numerics/portable.py)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"):
        return False
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, p, lambda: False)()) for p in probes)


def build_optimizer(cfg: GFLConfig, model: nn.Module, base_lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        # The fused kernel updates every tensor in one pass: 0.7 ms instead of 2.8 ms a step for the
        # demo model's 1M parameters on CPU.
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(params, lr=base_lr, weight_decay=cfg.weight_decay, fused=fused or None)
    return torch.optim.SGD(params, lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class _LossModule(nn.Module):
    """DDP synchronises gradients through ``forward``: route the loss through it."""

    def __init__(self, model: GFL):
        super().__init__()
        self.model = model

    def forward(self, images, targets, metas):
        return self.model.loss(images, targets, metas)


class JsonlLog:
    """Append-only JSON lines, each written with one ``write`` call and flushed, and forwarded to
    ``sinks`` (TensorBoard): the log is the record, a sink only mirrors it."""

    def __init__(self, path: Path, keep_until_iter: Optional[int] = None):
        """``keep_until_iter``: a resumed run keeps the lines up to its checkpoint; ``None``: a new run,
        which starts a new log rather than append to an earlier run's."""
        self.path = path
        if keep_until_iter is None and path.exists():
            path.unlink()
        if keep_until_iter is not None and path.exists():  # drop what a killed run logged past its checkpoint
            keep = []
            for ln in path.read_text().splitlines():
                try:
                    rec = json.loads(ln)
                except json.JSONDecodeError:
                    continue
                if rec.get("iter", 0) <= keep_until_iter:
                    keep.append(ln)
            atomic_write_text(path, "".join(k + "\n" for k in keep))
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.sinks: list = []  # each has write(rec), flush() and close(), and never raises

    def write(self, rec: dict) -> None:
        os.write(self.fd, (json.dumps(rec) + "\n").encode())
        for s in self.sinks:
            s.write(rec)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        os.close(self.fd)
        for s in self.sinks:
            s.close()


@dataclass
class Run:
    """Everything one training run holds between its set-up, its epochs and its checkpoints.

    ``state`` is what a checkpoint saves besides the tensors, and what ``--resume`` restores.
    """
    cfg: GFLConfig
    opts: TrainOptions
    work: Path
    device: torch.device
    distributed: bool
    rank: int
    world: int
    train_ds: CocoDetection
    val_ds: Optional[CocoDetection]
    model: GFL
    ema: Any
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    amp_dtype: Optional[torch.dtype]
    base_lr: float
    loss_module: nn.Module
    log: Optional[JsonlLog]
    state: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def latest(self) -> Path:
        return self.work / "latest.pth"

    @property
    def eval_model(self) -> GFL:
        """The weights to evaluate: the EMA when it is on (as mmengine's EMAHook evaluates)."""
        return self.ema.module if self.ema is not None else self.model


def _init_distributed(device: torch.device) -> tuple[bool, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): one process group, and each process on its own GPU."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_dist():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return distributed, device


def _load_data(cfg: GFLConfig, opts: TrainOptions, main: bool) -> tuple[CocoDetection, Optional[CocoDetection]]:
    """Every input is checked before any set-up (and its warnings): bad data is one clear error."""
    train_ds = CocoDetection(opts.train_ann, opts.train_images, cfg, train=True)
    if train_ds.num_classes != cfg.num_classes:
        raise ValueError(f"config has num_classes={cfg.num_classes} but {opts.train_ann} has "
                         f"{train_ds.num_classes} categories")
    train_ds.check_images()
    val_ds = None
    if main and opts.val_ann and opts.val_images:
        val_ds = CocoDetection(opts.val_ann, opts.val_images, cfg, train=False)
        val_ds.check_images()
    if main and opts.test_ann and opts.test_images:  # checked now, not after hours of training
        CocoDetection(opts.test_ann, opts.test_images, cfg, train=False).check_images()
    return train_ds, val_ds


def _amp_dtype(cfg: GFLConfig, device: torch.device, main: bool) -> Optional[torch.dtype]:
    """The autocast dtype (None: fp32): fp16 with a scaler on CUDA, bf16 on CPUs that compute it natively."""
    if device.type == "cuda" and cfg.amp:
        return torch.float16
    if device.type == "cpu" and cfg.cpu_amp:
        if cpu_has_native_bf16():
            return torch.bfloat16
        if main:
            warnings.warn("cpu_amp: no native bf16 here (the CPU lacks AVX512-BF16/AMX, or the kernels are capped "
                          "at AVX2: GFLNB_NATIVE_ISA=1 lifts gflnb's cap); training in fp32")
    return None


def setup(cfg: GFLConfig, opts: TrainOptions) -> Run:
    """Data, model, EMA, optimizer, AMP and log of a run, a new one or one resumed from ``latest.pth``."""
    work = Path(opts.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    distributed, device = _init_distributed(resolve_device(opts.device))
    rank, world = dist.rank(), dist.world_size()
    torch.manual_seed(cfg.seed)
    if opts.deterministic:
        torch.use_deterministic_algorithms(True)
    train_ds, val_ds = _load_data(cfg, opts, rank == 0)
    if opts.max_minutes is not None and rank == 0:
        warnings.warn(f"max_minutes={opts.max_minutes}: a wall-clock budget, so the result depends on this "
                      "machine's speed; budget in epochs or max_iters for one that reproduces everywhere")
    model = GFL(cfg)
    latest = work / "latest.pth"
    state = dict(epoch=0, iter_in_epoch=0, global_iter=0, bad_batches=0, train_seconds=0.0, eval_history=[])
    ckpt = None
    if opts.resume:
        if not latest.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {latest} to resume from")
        ckpt = read_checkpoint(latest)
        saved = from_dict(ckpt["meta"]["config"])
        if saved != cfg:
            diff = [k for k, v in saved.to_dict().items() if cfg.to_dict().get(k) != v]
            raise ValueError(f"--resume: the checkpoint's config differs in {', '.join(diff)}")
        model.load_state_dict(ckpt.get("train_state_dict", ckpt["state_dict"]))
        state.update({k: ckpt["meta"].get(k, state[k]) for k in state})
    else:
        model.init_weights()
    model.to(device)
    ema = make_ema(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema_decay > 0 else None
    if ema is not None and ckpt is not None and "train_state_dict" in ckpt:
        ema.module.load_state_dict(ckpt["state_dict"])
        ema.n_averaged.fill_(int(ckpt["meta"].get("ema_updates", 0)))
    base_lr = cfg.lr * cfg.batch_size * world / cfg.base_batch_size
    optimizer = build_optimizer(cfg, model, base_lr)
    amp_dtype = _amp_dtype(cfg, device, rank == 0)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"])
    loss_module: nn.Module = _LossModule(model)
    if distributed:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)
    log = None
    if rank == 0:
        log = JsonlLog(work / "log.jsonl", keep_until_iter=state["global_iter"] if opts.resume else None)
        if opts.tensorboard:
            from .tblog import open_tensorboard
            tb = open_tensorboard(work, resume_iter=state["global_iter"] if opts.resume else None)
            log.sinks += [tb] if tb is not None else []
        (work / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    return Run(cfg, opts, work, device, distributed, rank, world, train_ds, val_ds, model, ema, optimizer, scaler,
               amp_dtype, base_lr, loss_module, log, state)


def save_run(run: Run, path: Path) -> None:
    """The run's checkpoint, in :func:`gflnb.engine.checkpoint.save_checkpoint`'s format (atomically),
    from the main process only. ``state_dict`` holds the weights to evaluate (the EMA when it is on, as
    mmengine's EMAHook saves them); the raw training weights go to ``train_state_dict`` for ``--resume``,
    with the optimizer, the AMP scaler and the RNG state."""
    if not run.main:
        return
    meta = dict(config=run.cfg.to_dict(), classes=run.train_ds.class_names,
                label2cat={int(k): int(v) for k, v in run.train_ds.label2cat.items()}, gflnb=True, **run.state)
    extra = {}
    if run.ema is not None:
        meta["ema_updates"] = int(run.ema.n_averaged)
        extra["train_state_dict"] = run.model.state_dict()
    save_checkpoint(run.ema.module if run.ema is not None else run.model, path, meta,
                    optimizer=run.optimizer.state_dict(),
                    scaler=run.scaler.state_dict() if run.scaler is not None else None,
                    torch_rng=torch.get_rng_state(), **extra)


def train_step(run: Run, images: torch.Tensor, targets: list, metas: list) -> dict[str, float]:
    """One optimizer step; returns the losses. A non-finite loss skips the step (up to
    ``skip_bad_batches`` times) and then raises :class:`TrainingDiverged`."""
    with torch.autocast(device_type=run.device.type, dtype=run.amp_dtype or torch.bfloat16,
                        enabled=run.amp_dtype is not None):
        losses = run.loss_module(images, targets, metas)
    loss = sum(losses.values())
    values = {k: float(v.detach()) for k, v in losses.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    run.optimizer.zero_grad(set_to_none=True)
    if bad:
        run.state["bad_batches"] += 1
        msg = (f"non-finite {', '.join(bad)} at iteration {run.state['global_iter'] + 1} "
               f"(epoch {run.state['epoch'] + 1}): {values}")
        if run.state["bad_batches"] > run.opts.skip_bad_batches:
            raise TrainingDiverged(msg + f"; the last good checkpoint is {run.latest}")
        if run.main:
            run.log.write(dict(event="skipped_batch", iter=run.state["global_iter"], reason=msg))
        return values
    scaler = run.scaler
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(run.optimizer)
    if run.cfg.grad_clip:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    if scaler is not None:
        scaler.step(run.optimizer)
        scaler.update()
    else:
        run.optimizer.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)
    return values


def train_epoch(run: Run, t_start: float) -> Optional[str]:
    """The rest of the current epoch (all of it, or what a resumed run has left); returns why it
    stopped early (a budget), or None when the epoch is complete."""
    cfg, opts, state = run.cfg, run.opts, run.state
    epoch = state["epoch"]
    run.train_ds.set_epoch(epoch)
    batches = epoch_batches(run.train_ds.aspect_groups(), cfg.batch_size, cfg.seed, epoch, True, run.rank, run.world)
    run.model.train()
    bar = tqdm(total=len(batches), initial=state["iter_in_epoch"], desc=f"epoch {epoch + 1}/{cfg.epochs}",
               unit="it", disable=not (opts.progress and run.main), dynamic_ncols=True)
    t_data = time.perf_counter()
    try:
        for images, targets, metas in make_loader(run.train_ds, batches[state["iter_in_epoch"]:], cfg.num_workers):
            t0 = time.perf_counter()
            frac = (t0 - t_start) / 60 / opts.max_minutes if opts.max_minutes else None
            lr = lr_at(cfg, run.base_lr, epoch, state["global_iter"], frac)
            for g in run.optimizer.param_groups:
                g["lr"] = lr
            values = train_step(run, images.to(run.device, non_blocking=True),
                                [{k: v.to(run.device) for k, v in t.items()} for t in targets], metas)
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            t1 = time.perf_counter()
            state["global_iter"] += 1
            state["iter_in_epoch"] += 1
            if run.main:
                rec = dict(iter=state["global_iter"], epoch=epoch + 1, lr=lr, **values, loss=sum(values.values()),
                           data_time=round(t0 - t_data, 5), step_time=round(t1 - t0, 5),
                           imgs_per_s=round(len(metas) * run.world / (t1 - t_data), 2))
                run.log.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.2e}")
            bar.update(1)
            t_data = time.perf_counter()
            state["train_seconds"] = t_data - t_start
            if opts.max_minutes is not None and state["train_seconds"] / 60 >= opts.max_minutes:
                return f"time budget of {opts.max_minutes} min"
            if opts.max_iters is not None and state["global_iter"] >= opts.max_iters:
                return f"max_iters={opts.max_iters}"
            if opts.checkpoint_every and state["global_iter"] % opts.checkpoint_every == 0:
                save_run(run, run.latest)
    finally:
        bar.close()
    return None


def evaluate_epoch(run: Run, out: Optional[Path] = None):
    """COCO AP of the weights to evaluate on the validation set, kept in ``state['eval_history']``
    (and so in checkpoints and ``metrics.json``) and logged."""
    from .evaluate import evaluate_model
    res = evaluate_model(run.eval_model, run.val_ds, run.device, run.opts.eval_batch_size, out, run.opts.progress)
    entry = dict(epoch=run.state["epoch"], iter=run.state["global_iter"], **res.metrics)
    run.state["eval_history"] = [e for e in run.state["eval_history"] if e["epoch"] != entry["epoch"]] + [entry]
    run.log.write(dict(event="eval", **entry))
    return res


def end_epoch(run: Run) -> None:
    """A finished epoch: its checkpoints, and an evaluation when ``eval_every`` asks for one (before
    the checkpoint, so that a resumed run does not evaluate the same epoch again)."""
    run.state["epoch"] += 1
    run.state["iter_in_epoch"] = 0
    if not run.main:
        return
    every = run.opts.eval_every
    if every and run.val_ds is not None and run.state["epoch"] % every == 0 and run.state["epoch"] < run.cfg.epochs:
        evaluate_epoch(run)  # the last epoch is evaluated by train() itself
        run.model.train()
    run.log.flush()  # the sinks' (TensorBoard's) epoch on disk
    save_run(run, run.latest)
    if run.opts.keep_epoch_checkpoints:
        save_run(run, run.work / f"epoch_{run.state['epoch']}.pth")


def train(cfg: GFLConfig, opts: TrainOptions) -> dict[str, Any]:
    """Train ``cfg`` on COCO-format data; returns the final metrics (also written to the work dir)."""
    if opts.epochs is not None:
        cfg = from_dict({**cfg.to_dict(), "epochs": int(opts.epochs)})
    run = setup(cfg, opts)
    t_start = time.perf_counter() - run.state["train_seconds"]  # a resumed run keeps its budget
    stop_reason = "finished"
    try:
        while run.state["epoch"] < cfg.epochs:
            stop_reason = train_epoch(run, t_start) or stop_reason
            if stop_reason != "finished":
                save_run(run, run.latest)
                break
            end_epoch(run)
        state = run.state
        metrics: dict[str, Any] = dict(
            stop_reason=stop_reason, train_minutes=round((time.perf_counter() - t_start) / 60, 3),
            iterations=state["global_iter"], epoch=state["epoch"], iter_in_epoch=state["iter_in_epoch"],
            checkpoint=str(run.latest), machine=machine_info(),
            budget="wall-clock (machine-dependent)" if opts.max_minutes is not None else "iterations")
        if run.val_ds is not None:
            from .evaluate import format_table
            res = evaluate_epoch(run, run.work / "val_results.json")
            metrics.update(res.to_dict())
            print(format_table(res, f"{cfg.name} on {opts.val_ann}"))
        if run.main and opts.test_ann and opts.test_images and stop_reason == "finished":
            from .evaluate import evaluate_model, format_table
            test_ds = CocoDetection(opts.test_ann, opts.test_images, cfg, train=False)
            res = evaluate_model(run.eval_model, test_ds, run.device, opts.eval_batch_size,
                                 run.work / "test_results.json", opts.progress)
            metrics["test"] = dict(**res.to_dict(), ann=str(opts.test_ann), num_images=len(test_ds))
            print(format_table(res, f"{cfg.name} on {opts.test_ann}"))
        metrics["eval_history"] = state["eval_history"]
    finally:
        if run.log is not None:
            run.log.close()
    if run.main:
        (run.work / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if run.distributed:
        torch.distributed.destroy_process_group()
    return metrics
