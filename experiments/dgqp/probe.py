"""One DGQP probe (issue 18, item 4): the sweep's point (gfl_cpu_demo on synthetic set v2, 1,000
training images, batch 8) trained for --iters iterations with gflnb.engine.diagnose recording every step,
optionally with one intervention; writes experiments/dgqp/<name>.jsonl, <name>.json (the
validation AP at the end and the run's settings) and <name>.png (with --compare: other probes drawn
beside it).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/dgqp/probe.py dgqp_s0 --quality dgqp --iters 600
    ... probe.py sgd_s0 --quality dgqp --set optimizer=sgd --set lr=0.01 ... --compare dgqp_s0
    ... probe.py dgqp_lr0.1 --quality dgqp --intervene dgqp_lr=0.1

Interventions (one at a time): ``dgqp_lr=M`` the DGQP MLP on its own lr, M times the rest;
``dgqp_freeze=K`` the DGQP MLP not updated for the first K iterations; ``detach_stats`` the DGQP
reads detached distributions (probe-only patch; the kept option is the config field
``dgqp_detach_stats``); ``neg_stop_q`` the negatives' QFL terms do not reach the DGQP (only the
positives train it; the class logits are trained as before).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gflnb.config import get_config, parse_set  # noqa: E402
from gflnb.engine.diagnose import trace, write_jsonl  # noqa: E402
from gflnb.losses import AVG_EPS, quality_focal_loss_log  # noqa: E402
from gflnb.numerics.machine import machine_info  # noqa: E402
from gflnb.data.synth import dataset_paths  # noqa: E402
from gflnb.engine.train import Run, TrainOptions  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "data" / "synth_v2"


# ---------------------------------------------------------------------- interventions
def _dgqp_params(run: Run) -> list[torch.nn.Parameter]:
    return [p for n, p in run.model.named_parameters() if n.startswith("bbox_head.quality.")]


def dgqp_lr(mult: float) -> Callable[[Run], None]:
    """A second param group for the DGQP MLP whose lr is ``mult`` times the schedule's."""
    def apply(run: Run) -> None:
        q = _dgqp_params(run)
        ids = {id(p) for p in q}
        rest = [p for p in run.model.parameters() if p.requires_grad and id(p) not in ids]
        cfg = run.cfg
        groups = [dict(params=rest), dict(params=q, lr_mult=mult)]
        if cfg.optimizer == "adamw":
            run.optimizer = torch.optim.AdamW(groups, lr=run.base_lr, weight_decay=cfg.weight_decay, fused=True)
        else:
            run.optimizer = torch.optim.SGD(groups, lr=run.base_lr, momentum=cfg.momentum,
                                            weight_decay=cfg.weight_decay)

        def scale(opt, args, kwargs):  # train_epoch sets every group's lr before the step
            for g in opt.param_groups:
                g["lr"] = g["lr"] * g.get("lr_mult", 1.0)
        run.optimizer.register_step_pre_hook(scale)
    return apply


def dgqp_freeze(k: int) -> Callable[[Run], None]:
    """The DGQP MLP's gradients dropped before the step (so AdamW skips it) for the first k steps."""
    def apply(run: Run) -> None:
        q = _dgqp_params(run)

        def drop(opt, args, kwargs):
            if run.state["global_iter"] < k:
                for p in q:
                    p.grad = None
        run.optimizer.register_step_pre_hook(drop)
    return apply


def detach_stats(run: Run) -> None:
    """The DGQP reads the distribution through ``detach``: QFL no longer reaches the reg tower."""
    q = run.model.bbox_head.quality
    logit = q.quality_logit
    q.quality_logit = lambda reg: logit(reg.detach())


def neg_stop_q(run: Run) -> None:
    """DGQPQuality.loss with the quality detached in the negatives' terms."""
    q = run.model.bbox_head.quality

    def loss(cls, reg, extra, labels, label_weights, pos, avg_factor):
        score = label_weights.new_zeros(cls.shape[0])
        is_pos = torch.zeros(cls.shape[0], dtype=torch.bool, device=cls.device)
        if pos is not None:
            score[pos.index] = pos.iou
            is_pos[pos.index] = True
        lz = F.logsigmoid(q.quality_logit(reg))  # [N]
        lz = torch.where(is_pos, lz, lz.detach())
        qfl = quality_focal_loss_log(F.logsigmoid(cls) + lz[:, None], labels, score, q.beta)
        return dict(loss_cls=q.loss_cls_weight * (qfl * label_weights).sum() / (avg_factor + AVG_EPS))
    q.loss = loss


def parse_intervention(text: str) -> Callable[[Run], None]:
    name, _, value = text.partition("=")
    if name == "dgqp_lr":
        return dgqp_lr(float(value))
    if name == "dgqp_freeze":
        return dgqp_freeze(int(value))
    if name == "detach_stats":
        return detach_stats
    if name == "neg_stop_q":
        return neg_stop_q
    raise SystemExit(f"unknown intervention {text!r} (dgqp_lr=M, dgqp_freeze=K, detach_stats, neg_stop_q)")


# ---------------------------------------------------------------------- figure
PANELS = [  # (title, keys, y scale)
    ("log10 sigmoid(cls), positives (gt class)", ["cls_pos_mean", "cls_pos_min"], "linear"),
    ("log10 sigmoid(cls), all valid (anchor, class) pairs: mean, max", ["cls_all_mean", "cls_all_max"], "linear"),
    ("log10 joint score: positives (mean), negatives (max over classes, mean)",
     ["joint_pos_mean", "joint_neg_max_mean"], "linear"),
    ("positives: DGQP quality q (mean), IoU target (mean)", ["q_pos_mean", "iou_mean"], "linear"),
    ("loss_cls", ["loss_cls"], "log"),
    ("loss_bbox, loss_dfl", ["loss_bbox", "loss_dfl"], "log"),
    ("grad norm before clipping: DGQP, reg tower, cls tower", ["grad_dgqp", "grad_reg_tower", "grad_cls_tower"], "log"),
    ("d loss / d DGQP last bias (= sum of d/dz): loss_cls, box losses; > 0 pushes q down",
     ["dbias_cls", "dbias_box"], "symlog"),
    ("DGQP logit z: min, max over anchors", ["z_min", "z_max"], "linear"),
    ("top-1 bin mass, positives / negatives", ["top1_pos", "top1_neg"], "linear"),
    ("d loss_cls / d z summed: positives, negatives", ["dz_pos", "dz_neg"], "linear"),
    ("|d loss / d box logits|: loss_cls on positives, on negatives, every loss", ["dreg_cls_pos", "dreg_cls_neg",
                                                                                 "dreg_all"], "log"),
]
STYLES = ["-", "--", ":"]


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    it = np.array([r["iter"] for r in records if key in r], dtype=float)
    v = np.array([r[key] for r in records if key in r], dtype=float)
    return it, v


def plot(probes: dict[str, list[dict]], path: Path, smooth: int = 5) -> None:
    fig, axes = plt.subplots(3, 4, figsize=(21, 11))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys, yscale) in zip(axes.flat, PANELS):
        for pi, (name, records) in enumerate(probes.items()):
            for ki, key in enumerate(keys):
                it, v = _series(records, key)
                if len(v) == 0 or np.all(np.isnan(v)):
                    continue
                w = min(smooth, max(1, len(v)))
                vs = np.convolve(np.nan_to_num(v, nan=np.nanmean(v)), np.ones(w) / w, mode="valid")
                ax.plot(it[w - 1:], vs, STYLES[ki % 3], color=colors[pi % len(colors)], lw=1.1,
                        label=f"{name}: {key}")
        if yscale == "symlog":
            ax.set_yscale("symlog", linthresh=1e-3)
        elif yscale == "log":
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


# ---------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="the probe's name: experiments/dgqp/<name>.jsonl/.json/.png")
    ap.add_argument("--quality", default="dgqp", choices=["dgqp", "qfl"])
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=12, help="the schedule (milestones as the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    ap.add_argument("--intervene", default=None, help="dgqp_lr=M | dgqp_freeze=K | detach_stats | neg_stop_q")
    ap.add_argument("--compare", action="append", default=[], help="other probes drawn in the figure")
    ap.add_argument("--no-eval", action="store_true", help="skip the validation AP at the end")
    ap.add_argument("--plot-only", action="store_true", help="draw <name>.png from the jsonl files, train nothing")
    a = ap.parse_args(argv)
    if a.plot_only:
        plot({n: read_jsonl(HERE / f"{n}.jsonl") for n in [a.name, *a.compare]}, HERE / f"{a.name}.png")
        return 0
    overrides = dict(parse_set(s) for s in a.set)
    cfg = get_config("gfl_cpu_demo", quality=a.quality, seed=a.seed, **overrides)
    train_ann, train_images = dataset_paths(DATA, "train")
    val_ann, val_images = dataset_paths(DATA, "val")
    work = ROOT / "experiments" / "dgqp" / "runs" / a.name
    opts = TrainOptions(str(train_ann), str(train_images), str(work), str(val_ann), str(val_images),
                        epochs=a.epochs, max_iters=a.iters, keep_epoch_checkpoints=False, progress=True)
    interventions = [parse_intervention(a.intervene)] if a.intervene else []
    partial = HERE / "runs" / f"{a.name}.partial.jsonl"  # every record as it comes, should the probe die
    partial.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("w") as fh:
        records, metrics = trace(cfg, opts, interventions, on_record=lambda r: (fh.write(json.dumps(r) + "\n"),
                                                                                fh.flush()),
                                 evaluate=not a.no_eval)
    write_jsonl(HERE / f"{a.name}.jsonl", records)
    summary = dict(name=a.name, quality=a.quality, seed=a.seed, iters=a.iters, epochs=a.epochs,
                   overrides=overrides, intervention=a.intervene, machine=machine_info(),
                   command="OMP_NUM_THREADS=1 .venv/bin/python experiments/dgqp/probe.py " + " ".join(
                       argv if argv is not None else sys.argv[1:]),
                   **{k: v for k, v in metrics.items()
                      if k in ("AP", "AP50", "AP75", "train_minutes", "iterations", "stop_reason")})
    (HERE / f"{a.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    probes = {a.name: records}
    for other in a.compare:
        probes[other] = read_jsonl(HERE / f"{other}.jsonl")
    plot(probes, HERE / f"{a.name}.png")
    print(json.dumps({k: summary.get(k) for k in ("name", "AP", "AP50", "train_minutes", "iterations", "stop_reason")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
