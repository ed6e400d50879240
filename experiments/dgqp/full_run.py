"""One grid point of experiments/ablations/grid.yaml trained by its own command (chapter 3 through
papermill, 12 epochs, eval every 2, 1 thread), with its notebook and work dir under experiments/dgqp/
instead of experiments/ablations/ (so it never meets the sweep's); writes experiments/dgqp/full/<id>.json
with the AP, the learning curve, the wall time, the machine and the command.

    nice -n 10 .venv/bin/python experiments/dgqp/full_run.py dgqp 0
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import time
from pathlib import Path

from gflnb.numerics.machine import machine_info
from gflnb.study.sweep import Point, command, load_grid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant")
    ap.add_argument("seed", type=int)
    a = ap.parse_args(argv)
    grid = load_grid(ROOT / "experiments" / "ablations" / "grid.yaml")
    v = grid.variants[a.variant]
    p = Point(a.variant, a.seed, v["overrides"], v.get("parameters", {}))
    cmd = command(dataclasses.replace(grid, out=HERE), p)
    t0 = time.time()
    proc = subprocess.run(f"nice -n 10 env {cmd}", shell=True, cwd=ROOT, capture_output=True, text=True)
    wall = round(time.time() - t0, 1)
    rec = dict(variant=a.variant, seed=a.seed, overrides=p.overrides, command=cmd, grid_command=command(grid, p),
               wall_s=wall, returncode=proc.returncode, machine=machine_info() | {"threads": grid.threads})
    metrics_path = HERE / "runs" / p.id / "metrics.json"
    if proc.returncode == 0 and metrics_path.exists():
        m = json.loads(metrics_path.read_text())
        rec.update(status="ok", metrics=m["metrics"], train_minutes=m["train_minutes"],
                   iterations=m["iterations"], eval_history=m.get("eval_history", []))
    else:
        log = HERE / "runs" / p.id / "log.jsonl"
        last = [json.loads(ln) for ln in log.read_text().splitlines()][-1] if log.exists() else None
        err = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "Error" in ln or "diverged" in ln.lower()]
        rec.update(status="failed", error=err[-1][:600] if err else proc.stderr[-600:], last_log=last)
    out = HERE / "full" / f"{p.id}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps({k: rec.get(k) for k in ("variant", "seed", "status", "metrics", "wall_s", "error")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
