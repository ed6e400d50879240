"""gflnb speed against plain-PyTorch peers, in one run, interleaved, same threads and inputs.

    .venv/bin/python benchmarks/run.py [--quick] [--out benchmarks/results]

Measures (each latency also as a multiple of its FLOP floor = FLOPs / the machine's attained conv
rate, the best median of a large conv and a large matmul timed in the same interleaved rounds):
  * batch-1 inference at 800x1333 and 512x512: gflnb GFL R-50 (NHWC and NCHW) vs torchvision FCOS
    and RetinaNet R50-FPN (random weights, score threshold 0.05), rounds interleaved;
  * one training step (batch 2 of 512x512, SGD): gflnb vs FCOS;
  * ATSS time and peak memory against the number of gts on 22,400 anchors (each point in a fresh
    process), gflnb's candidate-only ATSS vs a dense one (IoU of every anchor with every gt);
  * QFL / DFL / GIoU forward+backward vs torchvision's sigmoid_focal_loss of the same size.
Writes results.json and results.md. Run it alone: a busy neighbour slows 2 cores 3-4x.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gflnb.engine.benchmark import markdown, run_suite  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few rounds, small sizes (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    res = run_suite(a.quick, progress=lambda m: print(m, flush=True))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
