"""``gflnb sweep``: a tiny grid end to end through the same code as the ablation sweep, then the
Ablations chapter rendered from its table."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gflnb.study import paper
from gflnb.book import ROOT, execute, records
from gflnb.cli import main
from gflnb.config import get_config
from gflnb.study.sweep import COLUMNS, GridError, command, load_grid
from gflnb.data.synth import make_dataset


def _grid(tmp: Path, out: Path, variants: dict, seeds=(0,), jobs=2, parameters=None) -> Path:
    """A tiny grid; ``parameters`` maps a variant to notebook parameters of its own."""
    data = tmp / "synth"
    if not data.exists():
        make_dataset(data, num_train=12, num_val=4, seed=3, progress=False)
        (data / "annotations" / "synth.json").write_text(json.dumps(dict(num_train=12, num_val=4, seed=0)))
    g = dict(notebook="notebooks/03_training.py", out=str(out), threads=1, jobs=jobs, seeds=list(seeds),
             background_images=2,
             parameters=dict(config="gfl_cpu_demo", data_root=str(data), num_train=12, num_val=4, epochs=1,
                             overrides=dict(warmup_iters=2, batch_size=4)),
             variants={k: dict(label=k, tables=["1a"], overrides=v) for k, v in variants.items()})
    for k, v in (parameters or {}).items():
        g["variants"][k]["parameters"] = v
    path = tmp / f"grid_{out.name}.yaml"
    path.write_text(yaml.safe_dump(g, sort_keys=False))
    return path


def _abs(path: str) -> Path:
    return Path(path) if os.path.isabs(path) else ROOT / path


def _table(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    grid = _grid(tmp, tmp / "a", {"gfl": {}, "iou": {"quality": "iou"}, "broken": {"quality": "nonsense"}})
    assert main(["sweep", str(grid), "--no-progress"]) == 0
    return tmp, grid, tmp / "a"


def test_the_table_has_a_row_per_point_and_records_failures(swept):
    _, _, out = swept
    rows = _table(out)
    assert [r["variant"] for r in rows] == ["gfl", "iou", "broken"] and set(rows[0]) == set(COLUMNS)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2 and all(0 <= float(r["AP"]) <= 100 and int(r["iterations"]) == 3 for r in ok)
    bad = rows[2]
    assert bad["status"] == "failed" and "quality" in bad["error"] and bad["AP"] == ""
    for r in ok:
        assert _abs(r["metrics_path"]).exists()
        rec = json.loads(_abs(r["record_path"]).read_text())
        assert rec["status"] == "ok" and rec["metrics"]["AP"] == pytest.approx(float(r["AP"]), abs=0.01)
        assert "background" in rec  # gfl and iou carry the Fig. 2 summary
    assert (out / "notebooks" / "gfl__s0.ipynb").exists()  # the executed notebook is the full record


def test_a_row_is_reproduced_by_its_command_alone(swept):
    _, _, out = swept
    row = _table(out)[0]
    m = json.loads(_abs(row["metrics_path"]).read_text())["metrics"]
    _abs(row["metrics_path"]).unlink()
    subprocess.run(["bash", "-c", row["command"]], cwd=ROOT, check=True, capture_output=True)
    again = json.loads(_abs(row["metrics_path"]).read_text())["metrics"]
    assert again["AP"] == m["AP"]  # seeds, budget in iterations, threads and kernels pinned: bit for bit


def test_only_reruns_some_rows_and_keeps_the_whole_table(swept):
    _, grid, out = swept
    before = _table(out)
    assert main(["sweep", str(grid), "--only", "gfl", "--no-progress"]) == 0  # done already: skipped
    after = _table(out)
    assert [r["variant"] for r in after] == ["gfl", "iou", "broken"] and after == before


def test_a_rerun_skips_done_points_and_retries_failed_ones(swept, capsys):
    _, grid, out = swept
    before = _table(out)
    assert main(["sweep", str(grid), "--no-progress"]) == 0
    assert "3 points: 1 run, 2 already done, 1 failed" in capsys.readouterr().out
    assert _table(out) == before


def test_a_killed_sweep_resumes_to_the_same_table(swept):
    tmp, _, ref_out = swept
    out = tmp / "b"
    grid = _grid(tmp, out, {"gfl": {}, "iou": {"quality": "iou"}}, jobs=1)
    cmd = [sys.executable, "-m", "gflnb", "sweep", str(grid), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300

    def status(pid: str):
        rec = out / "records" / f"{pid}.json"
        return json.loads(rec.read_text())["status"] if rec.exists() else None

    while not (status("gfl__s0") == "ok" and status("iou__s0") == "running") and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-sweep: the second point is running
    proc.wait()
    assert (status("gfl__s0"), status("iou__s0")) == ("ok", "running")  # its job dead: the rerun starts it again
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "2 points: 1 run, 1 already done" in r.stdout
    strip = lambda rows: [{k: v.replace(str(ref_out), "OUT").replace(str(out), "OUT") for k, v in row.items()}
                          for row in rows]
    assert strip(_table(out)) == strip(_table(ref_out)[:2])  # the uninterrupted sweep's gfl and iou rows


def test_bad_grids_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "g.yaml").write_text("notebook: notebooks/03_training.py\nseeds: [0]\n")
    assert main(["sweep", str(tmp_path / "g.yaml")]) == 2
    assert "gflnb: error: " in capsys.readouterr().err
    with pytest.raises(GridError, match="no variant nope"):
        load_grid(_grid(tmp_path, tmp_path / "o", {"gfl": {}})).select(["nope"])


def test_a_variant_may_set_its_own_notebook_parameters(tmp_path):
    grid = _grid(tmp_path, tmp_path / "p", {"gfl": {}, "long": {"milestones": [2]}}, parameters={"long": {"epochs": 2}})
    g = load_grid(grid)
    short, long_ = (command(g, p) for p in g.points)
    assert "-p epochs 1 " in short and "-p epochs 2 " in long_ and '"milestones": [2]' in long_
    assert main(["sweep", str(grid), "--only", "long", "--no-progress"]) == 0
    row = next(r for r in _table(tmp_path / "p") if r["variant"] == "long")
    assert row["status"] == "ok" and int(row["iterations"]) == 6  # 2 epochs of 12 images, batch 4
    rec = json.loads(_abs(row["record_path"]).read_text())
    assert rec["parameters"]["epochs"] == 2 and rec["parameters"]["num_train"] == 12  # the point's, the grid's
    for bad in ({"seed": 3}, {"data_version": 1}, {"overrides": {}}):
        g = yaml.safe_load(grid.read_text())
        g["variants"]["long"]["parameters"] = bad
        grid.write_text(yaml.safe_dump(g))
        with pytest.raises(GridError, match=f"variant 'long' may not set {next(iter(bad))}"):
            load_grid(grid)


def test_the_plateau_grid_is_the_papers_design_at_24_epochs_on_a_held_out_set():
    g = load_grid(ROOT / "experiments" / "ablations" / "grid.yaml")
    assert len(g.seeds) >= 5 and g.seeds == list(range(len(g.seeds)))
    par = g.parameters
    # every row on the schedule measured flat at its end (v2_12epochs' 24-epoch rows), and the final AP
    # on 2,000 held-out images of their own
    assert (par["epochs"], par["overrides"]) == (24, {"milestones": [16, 22]}) and "max_minutes" not in par
    assert (par["data_version"], par["eval_every"], par["data_root"], par["num_val"]) == (2, 2, "../data/synth_v2", 200)
    assert (par["num_test"], par["test_seed"]) == (2000, 7) and par["test_seed"] != par["data_seed"]
    assert set(g.variants) == set(paper.DESIGN) - set(paper.GFLNB_ROWS) and len(g.variants) == 21
    for name, v in g.variants.items():
        assert "parameters" not in v and "milestones" not in v["overrides"], name
        want = get_config("gfl_cpu_demo", **paper.DESIGN[name]["config"])
        assert get_config("gfl_cpu_demo", **v["overrides"]) == want, name
        assert set(v["tables"]) == {t for t, tab in paper.TABLES.items() if name in tab["rows"]}, name


def test_the_12_epoch_grid_is_the_papers_design():
    g = load_grid(ROOT / "experiments" / "ablations" / "v2_12epochs" / "grid.yaml")
    assert g.seeds == [0, 1, 2]
    par = g.parameters
    demo = get_config("gfl_cpu_demo")
    # the preset's whole schedule on the book's set, validation every 2 epochs, a budget in epochs
    assert par["epochs"] == demo.epochs == 12 and "overrides" not in par and "max_minutes" not in par
    assert (par["data_version"], par["eval_every"], par["data_root"]) == (2, 2, "../data/synth_v2")
    tabled = {k: v for k, v in g.variants.items() if v["tables"]}
    assert set(tabled) == set(paper.DESIGN) and len(set(tabled) - set(paper.GFLNB_ROWS)) == 21
    configs = set()
    for name, v in tabled.items():
        assert "parameters" not in v and "milestones" not in v["overrides"]
        want = get_config("gfl_cpu_demo", **paper.DESIGN[name]["config"])
        assert get_config("gfl_cpu_demo", **v["overrides"]) == want, name  # the variant paper.py defines
        configs.add(want)
        assert set(v["tables"]) == {t for t, tab in paper.TABLES.items() if name in tab["rows"]}, name
    assert len(configs) == len(tabled)  # 21 distinct models of the paper's, and gflnb's own rows
    # the rows of the paper's factorial tables, by what they set
    rows = lambda t: {(c.quality, c.box) for c in (get_config("gfl_cpu_demo", **tabled[v]["overrides"])  # noqa: E731
                                                  for v in paper.TABLES[t]["rows"])}
    assert rows("1a") == {(q, "dirac") for q in ("none", "centerness", "iou", "centerness_guided", "iou_guided", "qfl")}
    assert rows("2a") == {("centerness", b) for b in ("dirac", "gaussian", "integral", "dfl")}
    assert rows("3") == {(q, b) for q in ("centerness", "qfl") for b in ("dirac", "dfl")}
    # twice the schedule for GFL and beta = 1: 24 epochs, milestones as mmdetection's 2x
    for name, base in (("gfl_24e", "gfl"), ("beta1_24e", "beta1")):
        v = g.variants[name]
        assert v["tables"] == [] and v["parameters"] == {"epochs": 24}
        long_ = get_config("gfl_cpu_demo", **v["overrides"])
        assert long_.milestones == (16, 22)
        base_cfg = get_config("gfl_cpu_demo", **g.variants[base]["overrides"])
        assert get_config(long_, milestones=demo.milestones) == base_cfg  # otherwise the 12-epoch variant


def test_the_chapter_renders_from_the_sweeps_table(swept):
    tmp, grid, out = swept
    nb_out = tmp / "07.ipynb"
    execute(ROOT / "notebooks" / "07_ablations.py", nb_out,
            dict(results_csv=str(out / "results.csv"), grid=str(grid), records_dir=str(out / "records")),
            cwd=ROOT / "notebooks", timeout=300)
    rec = records(nb_out)
    assert len(rec) == 1


def test_a_failed_points_error_is_the_line_that_says_why():
    from gflnb.study.sweep import failure_line
    # papermill's wrapper line has no message; the notebook's own exception (ANSI-coloured) does
    out = ("Executing: 50%\nTraceback (most recent call last):\n"
           "papermill.exceptions.PapermillExecutionError: \n-----\nException encountered at \"In [9]\":\n"
           "\x1b[31mTrainingDiverged\x1b[39m: non-finite loss_cls at iteration 353 (epoch 3)\n")
    assert failure_line(out) == "TrainingDiverged: non-finite loss_cls at iteration 353 (epoch 3)"
    assert failure_line("ok\nan error without a traceback\nlast") == "an error without a traceback"
    assert failure_line("just this") == "just this" and failure_line("") == ""


def test_a_held_out_test_set_is_evaluated_once_and_kept_image_by_image(tmp_path):
    """The plateau sweep's path: num_test images of their own, evaluated after the last epoch; the
    record's test AP, the table's column and the committed per-image matches agree to the bit."""
    from gflnb.study.imagewise import ImageMatches, ap
    from gflnb.study.sweep import evals_path
    grid = _grid(tmp_path, tmp_path / "t", {"gfl": {}})
    g = yaml.safe_load(grid.read_text())
    g["parameters"].update(num_test=6, test_seed=9)
    grid.write_text(yaml.safe_dump(g, sort_keys=False))
    assert main(["sweep", str(grid), "--no-progress"]) == 0
    gr = load_grid(grid)
    p = gr.points[0]
    assert "-p num_test 6 -p test_seed 9" in command(gr, p)
    rec = json.loads((tmp_path / "t" / "records" / "gfl__s0.json").read_text())
    assert rec["status"] == "ok" and rec["test_images"] == 6
    m = ImageMatches.load(evals_path(gr, p))
    assert len(m.img_ids) == 6 and ap(m) == rec["test_metrics"]["AP"]
    assert _table(tmp_path / "t")[0]["test_AP"] == f"{rec['test_metrics']['AP']:.2f}"


def test_the_final_test_reevaluates_kept_checkpoints_and_checks_them_against_the_records(tmp_path, capsys):
    """A grid's final_test: each point's latest.pth on a larger set that begins with the training run's
    test images; its AP on those equals the record's to the bit, --redo gives the same numbers, and a
    record that disagrees fails the point with both numbers."""
    from gflnb.study import decide, finaltest
    grid = _grid(tmp_path, tmp_path / "t", {"gfl": {"score_thr": 0.0, "max_per_img": 20}})  # detections to compare
    g = yaml.safe_load(grid.read_text())
    g["parameters"].update(num_test=6, test_seed=9)
    grid.write_text(yaml.safe_dump(g, sort_keys=False))
    assert main(["sweep", str(grid), "--no-progress"]) == 0
    rec_path = tmp_path / "t" / "records" / "gfl__s0.json"
    rec = json.loads(rec_path.read_text())
    g["final_test"] = dict(num=10, seed=9)
    grid.write_text(yaml.safe_dump(g, sort_keys=False))
    assert finaltest.main([str(grid), "--no-progress"]) == 0
    fr = json.loads((tmp_path / "t" / "final" / "gfl__s0.json").read_text())
    kept = json.loads((tmp_path / "t" / "runs" / "gfl__s0" / "test_results.json").read_text())
    assert len(kept) > 0  # a model one epoch old finds nothing right (AP 0), but it does detect
    assert fr["num_images"] == 10 and fr["check"] == dict(images=6, AP=rec["test_metrics"]["AP"],
                                                           record_AP=rec["test_metrics"]["AP"],
                                                           same_detections=len(kept))
    pts = decide.points(load_grid(grid))
    assert pts["test_AP"].tolist() == [fr["metrics"]["AP"]] and pts["test_images"].tolist() == [10]
    assert finaltest.main([str(grid), "--no-progress"]) == 0 and "nothing pending" in capsys.readouterr().out
    cmd = fr["command"]
    assert cmd.startswith("OMP_NUM_THREADS=1 ") and "--points gfl__s0 --redo" in cmd
    assert finaltest.main([str(grid), "--points", "gfl__s0", "--redo", "--no-progress"]) == 0
    again = json.loads((tmp_path / "t" / "final" / "gfl__s0.json").read_text())
    assert again["metrics"] == fr["metrics"]
    kept[0]["score"] += 1e-9  # detections the checkpoint does not reproduce
    (tmp_path / "t" / "runs" / "gfl__s0" / "test_results.json").write_text(json.dumps(kept))
    assert finaltest.main([str(grid), "--points", "gfl__s0", "--redo", "--no-progress"]) == 1
    assert f"gfl__s0: its {len(kept)} detections on the first 6 images are not the" in capsys.readouterr().err
    rec["test_metrics"]["AP"] += 1e-9  # a record the checkpoint does not reproduce
    rec_path.write_text(json.dumps(rec))
    assert finaltest.main([str(grid), "--points", "gfl__s0", "--redo", "--no-progress"]) == 1
    assert "gfl__s0: AP on the first 6 images is" in capsys.readouterr().err
