"""``gflnb`` command line: synth, train, evaluate, predict, benchmark, sweep, export.

Bad input gives one line, ``gflnb: error: ...``, and exit status 2; never a traceback wall.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gflnb", description="Generalized Focal Loss: data, training, evaluation")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write the synthetic dataset in COCO's layout")
    s.add_argument("out")
    s.add_argument("--num-train", type=int, default=1000)
    s.add_argument("--num-val", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--version", type=int, default=None,
                   help="generator version (gflnb.data.synth.VERSIONS): 2 scales blur and occluders with the object "
                        "(the book's set); 1 is the ablation sweep's")

    t = sub.add_parser("train", help="train a preset on COCO-format data")
    t.add_argument("--config", required=True)
    t.add_argument("--train-ann", required=True)
    t.add_argument("--train-images", required=True)
    t.add_argument("--val-ann")
    t.add_argument("--val-images")
    t.add_argument("--work-dir", required=True)
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-minutes", type=float)
    t.add_argument("--max-iters", type=int, help="stop (with a checkpoint) after this many iterations")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--device", default="auto")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="also checkpoint every N iterations")
    t.add_argument("--skip-bad-batches", type=int, default=0, metavar="N",
                   help="skip up to N batches whose loss is not finite before stopping")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact reruns)")
    t.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard scalars beside log.jsonl")
    t.add_argument("--eval-every", type=int, default=0, metavar="N", help="also evaluate every N epochs")

    e = sub.add_parser("evaluate", help="COCO bbox evaluation of a checkpoint")
    e.add_argument("--config", required=True)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--ann", required=True)
    e.add_argument("--images", required=True)
    e.add_argument("--out", required=True, help="COCO results JSON to write")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--plain", action="store_true",
                   help="run the model as built (BN not folded, NCHW) instead of the inference path")

    r = sub.add_parser("predict", help="detect on your own images, folders, globs or videos; draw and write JSON")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="an image, a folder, a glob ('imgs/*.jpg') or a video")
    r.add_argument("--config", help="the preset the checkpoint was trained from (gflnb's own files carry it)")
    r.add_argument("--checkpoint", help="gflnb's or mmdetection's checkpoint")
    r.add_argument("--onnx", help="run this exported model (gflnb export) with onnxruntime instead")
    r.add_argument("--out", required=True, help="folder for results.json, images.json and the drawn images")
    r.add_argument("--score-thr", type=float, help="keep detections above this (default: the config's, 0.05)")
    r.add_argument("--draw-thr", type=float, default=0.3, help="draw detections scoring at least this")
    r.add_argument("--no-bars", action="store_true", help="no uncertainty bars on the box sides")
    r.add_argument("--no-draw", action="store_true", help="results JSON only")
    r.add_argument("--full-dists", action="store_true", help="also write every box's four distributions")
    r.add_argument("--ann", help="COCO annotations whose image ids the results take (to evaluate them)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    r.add_argument("--no-progress", action="store_true")

    b = sub.add_parser("benchmark", help="batch-1 inference speed")
    b.add_argument("--config", default="gfl_r50_fpn_1x_coco")
    b.add_argument("--shape", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--runs", type=int, default=20)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--checkpoint")
    b.add_argument("--amp", action="store_true")
    b.add_argument("--path", default="evaluate", choices=["evaluate", "nhwc", "plain"],
                   help="evaluate: what gflnb evaluate runs (BN folded, NHWC on CPU); nhwc: NHWC, BN not "
                        "folded; plain: the model as built")
    b.add_argument("--json", help="also write the result here")

    x = sub.add_parser("export", help="the inference path as ONNX: backbone to decoded boxes and scores "
                                      "(NMS: gflnb.engine.export.postprocess)")
    x.add_argument("--config", required=True, help="the preset the checkpoint was trained from")
    x.add_argument("--checkpoint", help="gflnb's or mmdetection's checkpoint")
    x.add_argument("--random-weights", action="store_true", help="no checkpoint: random weights (for timing)")
    x.add_argument("--out", required=True, help="the .onnx file to write")
    x.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")

    w = sub.add_parser("sweep", help="run a grid of notebook experiments (variant x seed) with papermill")
    w.add_argument("grid", help="grid file, e.g. experiments/ablations/grid.yaml")
    w.add_argument("--jobs", type=int, help="runs side by side (default: the grid's)")
    w.add_argument("--only", nargs="+", metavar="VARIANT", help="these variants only")
    w.add_argument("--seeds", nargs="+", type=int, help="these seeds only")
    w.add_argument("--no-progress", action="store_true")
    w.add_argument("--executor", default="local", metavar="WHERE",
                   help="local (threads here, the default), dask://HOST:PORT, slurm or submitit-local "
                        "(gflnb/study/executors.py)")
    w.add_argument("--partition", help="slurm: the partition")
    w.add_argument("--time", type=int, default=1440, metavar="MIN", help="slurm, submitit-local: a point's time limit")
    w.add_argument("--cpus-per-task", type=int, metavar="N", help="slurm: CPUs of a point's job")
    w.add_argument("--gpus-per-node", type=int, metavar="N", help="slurm: GPUs of a point's job")
    w.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a notebook parameter of the grid (value in YAML), e.g. train_ann=/data/x.json")
    w.add_argument("--dry-run", action="store_true", help="print each point's command and state, check the grid")
    w.add_argument("--mlflow", action="store_true", help="also log each point as an MLflow run in OUT/mlflow.db")

    m = sub.add_parser("mlflow-import", help="import a sweep's records as MLflow runs (OUT/mlflow.db), running nothing")
    m.add_argument("sweep", help="the sweep's output folder (with records/) or its grid file")
    return p


def _overrides(items: Sequence[str]) -> dict:
    from .config import parse_set
    return dict(parse_set(i) for i in items)


def _cmd_synth(a) -> None:
    from .data.synth import make_dataset
    from .data.synth import LATEST_VERSION
    paths = make_dataset(a.out, a.num_train, a.num_val, a.seed, version=a.version or LATEST_VERSION)
    for split, path in paths.items():
        print(f"{split}: {path}")


def _cmd_train(a) -> None:
    from .config import get_config
    from .data.coco import ann_stats
    from .engine.train import TrainOptions, train
    over = _overrides(a.set)
    over.setdefault("num_classes", ann_stats(a.train_ann)["num_classes"])
    cfg = get_config(a.config, **over)
    if bool(a.val_ann) != bool(a.val_images):
        raise ValueError("--val-ann and --val-images go together")
    opts = TrainOptions(a.train_ann, a.train_images, a.work_dir, a.val_ann, a.val_images, a.epochs, a.max_minutes,
                        a.max_iters, a.resume, a.device, a.checkpoint_every, a.skip_bad_batches, not a.no_progress,
                        deterministic=a.deterministic, eval_every=a.eval_every, tensorboard=not a.no_tensorboard)
    m = train(cfg, opts)
    print(json.dumps({k: v for k, v in m.items() if k != "per_class"}))


def _cmd_evaluate(a) -> None:
    import torch

    from .engine.checkpoint import load_checkpoint, read_checkpoint
    from .config import get_config
    from .data.coco import CocoDetection
    from .model.detector import GFL
    from .engine.evaluate import evaluate_model, format_table
    from .engine.train import resolve_device
    ck = read_checkpoint(a.checkpoint)
    over = _overrides(a.set)
    ds_cfg = get_config(a.config, **over)
    ds = CocoDetection(a.ann, a.images, ds_cfg, train=False)
    ds.check_images()
    over.setdefault("num_classes", ds.num_classes)
    cfg = get_config(a.config, pretrained_backbone=False, **over)
    model = GFL(cfg)
    load_checkpoint(model, ck)
    device = resolve_device(a.device)
    res = evaluate_model(model.to(device), ds, device, a.batch_size, a.out, not a.no_progress, fast=not a.plain)
    print(format_table(res, f"{cfg.name}: {a.checkpoint} on {a.ann}"))
    Path(a.out).with_suffix(".metrics.json").write_text(json.dumps(res.to_dict(), indent=1))


def _cmd_benchmark(a) -> None:
    from .engine.benchmark import benchmark_inference
    from .numerics.machine import describe
    r = benchmark_inference(a.config, tuple(a.shape), a.device, a.warmup, a.runs, a.checkpoint, a.amp, a.path)
    where = r["device_name"] if a.device == "cuda" else describe(r)
    print(f"{r['config']} {r['shape'][0]}x{r['shape'][1]} (padded {r['padded'][0]}x{r['padded'][1]}), "
          f"{a.path} path, on {where}, batch 1: median {r['median_s'] * 1000:.1f} ms "
          f"(IQR {r['q1_s'] * 1000:.1f}-{r['q3_s'] * 1000:.1f} ms, {r['runs']} runs), {r['fps']:.2f} images/s")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))


def _cmd_export(a) -> None:
    from .engine.checkpoint import model_from_checkpoint
    from .config import get_config
    from .model.detector import GFL
    from .engine.export import export_onnx
    if bool(a.checkpoint) == bool(a.random_weights):
        raise ValueError("give --checkpoint PATH, or --random-weights to export an untrained model")
    over = _overrides(a.set)
    cfg = get_config(a.config, pretrained_backbone=False, **over)  # an unknown preset fails here
    if a.checkpoint:  # gflnb's own files: their classes and fields; another architecture: one CheckpointError
        model, meta = model_from_checkpoint(a.checkpoint, a.config, **over)
        cfg = model.cfg
    else:
        model, meta = GFL(cfg), {}
    out = export_onnx(model.eval(), a.out, classes=meta.get("classes"), label2cat=meta.get("label2cat"))
    print(f"{out}: {cfg.name}, {cfg.num_classes} classes, input [B, 3, H, W] (H, W multiples of "
          f"{cfg.size_divisor}), outputs boxes and scores before NMS")


def _cmd_predict(a) -> None:
    from .engine.predict import Detector, PredictError, check_writable_dir, run_predict, summary_line
    if bool(a.checkpoint) == bool(a.onnx):
        raise PredictError("give --checkpoint PATH, or --onnx FILE (gflnb export)")
    check_writable_dir(a.out)  # before loading anything: a bad output path fails at once
    if a.onnx:
        det = Detector(a.config, onnx=a.onnx, batch_size=a.batch_size)
    else:
        det = Detector(a.config, a.checkpoint, device=a.device, batch_size=a.batch_size, **_overrides(a.set))
    s = run_predict(det, a.inputs, a.out, a.score_thr, a.draw_thr, bars=not a.no_bars, draw=not a.no_draw, ann=a.ann,
                    full_dists=a.full_dists, progress=not a.no_progress)
    print(summary_line(s))
    if not s["images"]:
        raise PredictError(f"no image could be read from {' '.join(a.inputs)}")


def _cmd_sweep(a) -> None:
    from .study.executors import SlurmOptions
    from .study.gridcheck import dry_run, parse_sets
    from .study.sweep import GridError, load_grid, run_sweep
    sets = parse_sets(a.set)
    if a.dry_run:
        grid = load_grid(a.grid, sets)
        lines, problems = dry_run(grid, grid.select(a.only, a.seeds))
        print("\n".join(lines))
        for msg in problems:
            print(f"gflnb: grid: {msg}", file=sys.stderr)
        if problems:
            raise GridError(f"{a.grid}: {len(problems)} problem(s), listed above: {problems[0]}")
        return
    sink = None
    if a.mlflow:
        from .study.tracking import mlflow_sink, require_mlflow
        require_mlflow()  # missing: one line now, not after hours of runs
        sink = mlflow_sink
    slurm = SlurmOptions(a.partition, a.time, a.cpus_per_task, a.gpus_per_node)
    r = run_sweep(a.grid, a.jobs, a.only, a.seeds, not a.no_progress, sink=sink, executor=a.executor,
                  slurm=slurm, sets=sets)
    print(f"{r['points']} points: {r['ran']} run, {r['skipped']} already done, {r['failed']} failed, "
          + (f"{r['running']} running elsewhere, " if r["running"] else "")
          + f"{r['wall_s'] / 60:.1f} min with {r['jobs']} side by side ({r['executor']}); table: {r['table']}")


def _cmd_mlflow_import(a) -> None:
    from .study.tracking import log_sweep_to_mlflow, resolve_sweep, store_uri
    n = log_sweep_to_mlflow(a.sweep)
    print(f"{n} runs imported (unchanged points skipped); "
          f"mlflow ui --backend-store-uri {store_uri(resolve_sweep(a.sweep)[0])}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"gflnb: warning: {message}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from .model.backbone import PretrainedWeightsError
    from .engine.checkpoint import CheckpointError
    from .config import ConfigError
    from .data.coco import DataError
    from .study.sweep import GridError
    from .study.tracking import TrackingError
    from .engine.train import TrainingDiverged
    warnings.simplefilter("default")
    warnings.showwarning = _show_warning
    known = (ConfigError, CheckpointError, DataError, PretrainedWeightsError, TrainingDiverged, GridError,
             TrackingError, FileNotFoundError, ValueError, KeyError, RuntimeError)
    try:
        {"synth": _cmd_synth, "train": _cmd_train, "evaluate": _cmd_evaluate, "benchmark": _cmd_benchmark,
         "sweep": _cmd_sweep, "export": _cmd_export, "predict": _cmd_predict, "mlflow-import": _cmd_mlflow_import}[args.cmd](args)
    except known as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"gflnb: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gflnb: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
