"""A sweep's final test: every finished point's kept checkpoint evaluated once on a larger held-out
set than its training run used, without training again.

The pilot fixes the test set's size after points have run (pilot.md). A grid names it:

    final_test: {num: 8000, seed: 7}

and the points' records keep what their training run measured. Each point's final weights are its
run folder's ``latest.pth`` (the demo trains without EMA, so they are the weights its own test
evaluation saw). Their detections on the final set are matched image by image and kept in
``final/ID.npz``, the metrics and the command in ``final/ID.json``.

The synthetic generator draws image i of a set from the i-th child of the set's seed, so a set of
8,000 images with seed 7 begins with the 2,000 that the training runs were tested on, and the
evaluation batches them alike. Each point is therefore checked: its AP on those first images must
equal the AP its record holds, to the last bit, and its detections there must be the ones its
training run wrote (``runs/ID/test_results.json``, while the run folder keeps it), or the point
fails with both.

    OMP_NUM_THREADS=1 .venv/bin/python -m gflnb.study.finaltest experiments/ablations/grid.yaml [--only V ...]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..files import atomic_write_text, file_sha256
from .imagewise import ImageMatches, ap, match_images
from .sweep import Grid, Point, load_grid, point_parameters, record_path

EVAL_BATCH = 8  # TrainOptions.eval_batch_size: the batches the training run's own test evaluation used


class FinalTestError(RuntimeError):
    """A point that cannot be given its final test, or whose check fails."""


def spec(grid: Grid) -> Optional[dict[str, int]]:
    """The grid's ``final_test`` as ``dict(num, seed)``; None where it has none."""
    from .sweep import read_grid_file
    ft = read_grid_file(grid.path).get("final_test")
    if ft is None:
        return None
    if not isinstance(ft, dict) or not isinstance(ft.get("num"), int) or ft["num"] <= 0:
        raise FinalTestError(f"{grid.path}: final_test must be {{num: N, seed: S}} with N > 0")
    return dict(num=int(ft["num"]), seed=int(ft.get("seed", grid.parameters.get("test_seed", 7))))


def final_dir(grid: Grid) -> Path:
    return grid.out / "final"


def final_record_path(grid: Grid, p: Point) -> Path:
    return final_dir(grid) / f"{p.id}.json"


def final_evals_path(grid: Grid, p: Point) -> Path:
    return final_dir(grid) / f"{p.id}.npz"


def test_set(grid: Grid, num: int, seed: int) -> tuple[Path, Path]:
    """The final set's ``(annotation file, image dir)``, generated once where chapter 3 keeps its test
    sets (:func:`gflnb.data.synth.ensure_test_set`)."""
    from ..data.synth import ensure_test_set
    version = int(grid.parameters.get("data_version", 2))
    return ensure_test_set(version, num, seed, base=grid.notebook.parent, progress=True)


def evaluate_point(grid: Grid, p: Point, ann: Path, images: Path, num: int, seed: int,
                   progress: bool = True) -> dict[str, Any]:
    """Point ``p``'s final test (the module docstring says what is checked); writes and returns its
    final record."""
    from pycocotools.coco import COCO

    from ..data.coco import CocoDetection
    from ..engine.checkpoint import model_from_checkpoint
    from ..engine.evaluate import coco_eval, predict_dataset
    rp = record_path(grid, p)
    rec = json.loads(rp.read_text()) if rp.exists() else {}
    if rec.get("status") != "ok" or "test_metrics" not in rec:
        raise FinalTestError(f"{p.id}: no finished record with a test AP at {rp}")
    ckpt = grid.out / "runs" / p.id / "latest.pth"
    if not ckpt.exists():
        raise FinalTestError(f"{p.id}: its checkpoint {ckpt} is gone; rerun the point ({rec.get('command')})")
    t0, c0 = time.perf_counter(), time.process_time()
    model, _ = model_from_checkpoint(ckpt)
    ds = CocoDetection(str(ann), str(images), model.cfg, train=False)
    n_rec = int(rec.get("test_images") or point_parameters(grid, p)["num_test"])
    chunks = lambda a, b: [list(range(i, min(i + EVAL_BATCH, b))) for i in range(a, b, EVAL_BATCH)]  # noqa: E731
    # the first n_rec images batched as the training run batched them, then the rest
    results = predict_dataset(model, ds, "cpu", EVAL_BATCH, progress, batches=chunks(0, n_rec) + chunks(n_rec, len(ds)))
    frozen = json.dumps(results)  # pycocotools' loadRes adds fields to the dicts it is given
    with contextlib.redirect_stdout(io.StringIO()):
        res = coco_eval(ds, json.loads(frozen))
        matches = match_images(COCO(str(ann)), json.loads(frozen))
    first = (matches.img_ids <= n_rec).astype(np.float64)  # the training run's test images: ids 1..n
    ap_first, ap_record = ap(matches, first), float(rec["test_metrics"]["AP"])
    if ap_first != ap_record:
        raise FinalTestError(f"{p.id}: AP on the first {n_rec} images is {ap_first!r}, its record says "
                             f"{ap_record!r}: the final set or the evaluation is not the training run's")
    kept = grid.out / "runs" / p.id / "test_results.json"  # the training run's own detections, while kept
    n_det = None
    if kept.exists():
        mine = [r for r in json.loads(frozen) if r["image_id"] <= n_rec]
        theirs = json.loads(kept.read_text())
        if mine != theirs:
            raise FinalTestError(f"{p.id}: its {len(mine)} detections on the first {n_rec} images are not the "
                                 f"{len(theirs)} its training run wrote ({kept})")
        n_det = len(mine)
    matches.save(final_evals_path(grid, p))
    out = dict(variant=p.variant, seed=p.seed, status="ok", **res.to_dict(), num_images=len(ds),
               test_seed=seed, checkpoint=str(ckpt.relative_to(grid.out)), checkpoint_sha256=file_sha256(ckpt),
               check=dict(images=n_rec, AP=ap_first, record_AP=ap_record, same_detections=n_det),
               command=command(grid, [p.id]), seconds=round(time.perf_counter() - t0, 1),
               cpu_seconds=round(time.process_time() - c0, 1),  # the design's cost: wall time depends on the load
               threads=int(os.environ.get("OMP_NUM_THREADS", 0)) or None)
    atomic_write_text(final_record_path(grid, p), json.dumps(out, indent=1))
    return out


def command(grid: Grid, ids: Sequence[str]) -> str:
    """The command that gives the points ``ids`` their final test again (``--redo``)."""
    from .sweep import ROOT, _python
    grid_arg = os.path.relpath(grid.path.resolve(), ROOT)
    args = [_python(), "-m", "gflnb.study.finaltest", grid_arg, "--points", *ids, "--redo"]
    return f"OMP_NUM_THREADS={grid.threads} " + shlex.join(args)


def pending(grid: Grid, only: Optional[Sequence[str]] = None, ids: Optional[Sequence[str]] = None,
            redo: bool = False) -> list[Point]:
    """Points with a finished record (status ok) and, unless ``redo``, no final record yet; ``only``
    keeps these variants' points, ``ids`` these points."""
    out = []
    for p in grid.select(only):
        if ids and p.id not in ids:
            continue
        rp = record_path(grid, p)
        if rp.exists() and (redo or not final_record_path(grid, p).exists()) \
                and json.loads(rp.read_text()).get("status") == "ok":
            out.append(p)
    return out


def run(grid_file: str | Path, only: Optional[Sequence[str]] = None, ids: Optional[Sequence[str]] = None,
        redo: bool = False, progress: bool = True) -> int:
    """Give every pending point its final test; returns the number of points that failed."""
    grid = load_grid(grid_file)
    ft = spec(grid)
    if ft is None:
        raise FinalTestError(f"{grid.path}: no final_test in the grid")
    unknown = sorted(set(ids or ()) - {p.id for p in grid.points})
    if unknown:
        raise FinalTestError(f"{grid.path}: no point {', '.join(unknown)}")
    todo = pending(grid, only, ids, redo)
    if not todo:
        print("final test: nothing pending")
        return 0
    ann, images = test_set(grid, ft["num"], ft["seed"])
    failed = 0
    for p in todo:
        try:
            r = evaluate_point(grid, p, ann, images, ft["num"], ft["seed"], progress)
            print(f"{p.id}: AP {r['metrics']['AP']:.2f} on {r['num_images']:,} images "
                  f"(first {r['check']['images']:,}: {r['check']['AP']!r} = its record's), {r['seconds']:.0f} s",
                  flush=True)
        except FinalTestError as e:
            failed += 1
            print(f"{p.id}: FAILED: {e}", file=sys.stderr, flush=True)
    return failed


def read(grid: Grid, p: Point) -> Optional[dict[str, Any]]:
    """Point ``p``'s final record, None where it has none yet."""
    fp = final_record_path(grid, p)
    return json.loads(fp.read_text()) if fp.exists() else None


def load_matches(grid: Grid, p: Point) -> ImageMatches:
    return ImageMatches.load(final_evals_path(grid, p))


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = argparse.ArgumentParser(prog="python -m gflnb.study.finaltest", description=__doc__.splitlines()[0])
    a.add_argument("grid")
    a.add_argument("--only", nargs="+", help="these variants' points only")
    a.add_argument("--points", nargs="+", help="these points only (ID: variant__sSEED)")
    a.add_argument("--redo", action="store_true", help="evaluate points that already have a final record again")
    a.add_argument("--no-progress", action="store_true")
    args = a.parse_args(argv)
    try:
        return 1 if run(args.grid, args.only, args.points, args.redo, not args.no_progress) else 0
    except FinalTestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
