import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from gflnb.book import ROOT, build_book, execute
from gflnb.data.synth import dataset_paths, make_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
sys.path.insert(0, str(FIXTURES))  # make_weights.py, the reference's weight rule


def load_fixture(name: str):
    return torch.load(FIXTURES / name, weights_only=True)


def tol(dtype):
    """The parity tolerances: fp32 1e-5 (rel and abs), fp64 1e-10."""
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


def assert_close(actual, expected, **kw):
    expected = torch.as_tensor(expected)
    opts = tol(expected.dtype)
    opts.update(kw)
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, **opts)


@pytest.fixture(scope="session")
def head_fixture():
    return load_fixture("gfl_head.pt")


# The book executed on tiny parameters and built

NB = ROOT / "notebooks"


def _fake_anchor_scores(separate: bool, seed: int, n: int = 3000) -> dict:
    """An ``anchor_scores``-shaped input: mostly background, some well-localised anchors."""
    import numpy as np
    rng = np.random.default_rng(seed)
    iou = rng.beta(0.5, 2.0, n)
    cls = np.clip(rng.beta(0.6, 6.0, n) + 0.5 * iou, 0, 1)
    q = np.clip(0.6 * rng.beta(2.0, 2.0, n) + 0.4 * iou, 0, 1) if separate else None
    score = cls * q if separate else np.clip(0.9 * iou + rng.normal(0, 0.05, n), 0, 1)
    return dict(quality="iou" if separate else "qfl", box="dfl", separate=separate, images=2, score=score,
                cls=cls if separate else None, quality_score=q, iou=iou, level=np.zeros(n, int), image=np.zeros(n, int))


def _write_ablation_sweep(root: Path) -> dict:
    """A tiny sweep output for chapter 7: Table 1a's joint QFL and IoU-branch rows (both Dirac boxes, as the
    paper's) x 2 seeds, one failed run, two Fig. 2 records."""
    import csv
    from gflnb.chapters.analysis import background_summary
    root.mkdir(parents=True)
    (root / "grid.yaml").write_text(
        "notebook: notebooks/03_training.py\nseeds: [0, 1, 2]\n"
        "parameters: {config: gfl_cpu_demo, num_train: 12, num_val: 4, epochs: 3}\n"
        "variants:\n"
        "  qfl_dirac: {tables: ['1a', '1c', '3'], label: 'joint, QFL, Dirac box', overrides: {box: dirac}}\n"
        "  iou:  {tables: ['1a'], label: 'separate IoU branch', overrides: {quality: iou, box: dirac}}\n"
        "  none: {tables: ['1a'], label: 'no quality (focal loss)', overrides: {quality: none, box: dirac}}\n")
    cols = ["variant", "seed", "AP", "AP50", "AP75", "APs", "APm", "APl", "status", "error", "iterations", "wall_s",
            "command", "metrics_path", "record_path"]
    ap = {("qfl_dirac", 0): 55.4, ("qfl_dirac", 1): 56.0, ("qfl_dirac", 2): 55.7,
          ("iou", 0): 53.1, ("iou", 1): 53.9, ("iou", 2): 53.5}
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for (v, sd), a in ap.items():
            w.writerow(dict(variant=v, seed=sd, AP=a, AP50=a + 20.1, AP75=a + 4.2, APs=a - 20, APm=a - 1, APl=a + 5,
                            status="ok", error="", iterations=9, wall_s=12.5, command="...",
                            metrics_path=f"runs/{v}__s{sd}/metrics.json", record_path=f"records/{v}__s{sd}.json"))
        w.writerow(dict(variant="none", seed=0, status="failed", error="exit 1: RuntimeError: out of memory",
                        command="...", metrics_path="runs/none__s0/metrics.json", record_path="records/none__s0.json"))
    (root / "records").mkdir()
    for v, sep in (("qfl_dirac", False), ("iou", True)):
        rec = dict(variant=v, seed=0, overrides={"box": "dirac"} if v == "qfl_dirac" else {"quality": "iou", "box": "dirac"},
                   status="ok", command="...",
                   metrics={"AP": ap[(v, 0)]}, background=background_summary(_fake_anchor_scores(sep, seed=1)))
        (root / "records" / f"{v}__s0.json").write_text(json.dumps(rec))
    return dict(results_csv=str(root / "results.csv"), grid=str(root / "grid.yaml"),
                records_dir=str(root / "records"))


@pytest.fixture(scope="session")
def executed(tmp_path_factory):
    """Every chapter executed by papermill on tiny parameters into a copy of the book (shared by
    tests/test_notebooks.py and tests/test_page_width.py: executing them takes minutes)."""
    tmp = tmp_path_factory.mktemp("nb")
    make_dataset(tmp / "synth", num_train=12, num_val=4, seed=3, progress=False)
    val_ann, val_img = (str(p) for p in dataset_paths(tmp / "synth", "val"))
    ck = str(tmp / "run" / "latest.pth")
    params = {
        "01_quality_focal_loss": dict(target_iou=0.6, betas=[1.0, 2.0], toy_steps=30, toy_samples=400),
        "02_distribution_focal_loss": dict(target=3.7, steps=200, reg_max=8),
        "03_training": dict(data_root=str(tmp / "synth"), num_train=12, num_val=4, epochs=3, max_minutes=2.0,
                            work_dir=str(tmp / "run"), overrides={"warmup_iters": 2, "batch_size": 4}),
        "04_coco_evaluation": dict(checkpoint=ck, ann=val_ann, images=val_img, score_thr=0.0,
                                   results_file=str(tmp / "eval" / "results.json")),
        "05_learned_distributions": dict(checkpoint=ck, ann=val_ann, images=val_img, max_images=4, gallery_size=2,
                                         score_thr=0.0, iou_match=0.05),
        "06_performance": dict(results_json=str(tmp / "none.json"), quick=True),
        "07_ablations": _write_ablation_sweep(tmp / "ablations"),
    }
    book = tmp / "book"
    book.mkdir()
    for f in ("_config.yml", "_toc.yml", "intro.md"):
        shutil.copy(ROOT / "book" / f, book / f)
    shutil.copytree(ROOT / "book" / "docs", book / "docs")
    shutil.copytree(ROOT / "book" / "css", book / "css")  # the user pages, as the book has them
    shutil.copy(ROOT / "CHANGELOG.md", tmp / "CHANGELOG.md")  # docs/history.md includes ../../CHANGELOG.md
    out = {}
    for name, p in params.items():
        path = book / "notebooks" / f"{name}.ipynb"
        execute(NB / f"{name}.py", path, p, cwd=NB, timeout=600)
        out[name] = (path, p)
    return dict(book=book, notebooks=out, tmp=tmp)


@pytest.fixture(scope="session")
def built(executed):
    index = build_book(executed["book"])
    assert index.exists()
    return index.parent
