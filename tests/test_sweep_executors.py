"""``gflnb sweep --executor``: the tiny grid of tests/test_sweep.py on a Dask LocalCluster and on
submitit's local cluster gives the local executor's table; a killed worker's point is rerun; a
``running`` record is rerun once its process is dead and never started twice while it lives; Slurm
submission and ``sacct`` states through fake ``sbatch``/``sacct``; ``--dry-run`` on the COCO grid."""
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from distributed import LocalCluster

from gflnb.study.ablation import read_grid, read_results, run_info, variant_stats
from gflnb.book import ROOT
from gflnb.cli import main
from gflnb.study.executors import SlurmOptions, alive, open_backend, pid_alive, process_started
from gflnb.study.sweep import command, load_grid, run_sweep
from gflnb.data.synth import dataset_paths, make_dataset
from test_sweep import _grid, _table  # the same tiny grid: 12 images, 1 epoch (3 iterations)

VARIANTS = {"gfl": {}, "none": {"quality": "none", "box": "dirac"}}  # one with the Fig. 2 pass, one without
METRICS = ("variant", "seed", "AP", "AP50", "AP75", "APs", "APm", "APl", "status", "error", "iterations")


def _metrics(out: Path) -> list[dict]:
    return [{k: r[k] for k in METRICS} for r in _table(out)]


def _trained(out: Path, pid: str) -> tuple[dict, object]:
    """The last training step's losses and the record's Fig. 2 summary: the trained model, compared
    where 3 iterations leave every AP at 0."""
    steps = [json.loads(ln) for ln in (out / "runs" / pid / "log.jsonl").read_text().splitlines()]
    last = [s for s in steps if "loss" in s][-1]
    rec = json.loads((out / "records" / f"{pid}.json").read_text())
    return {k: v for k, v in last.items() if k.startswith("loss")}, rec.get("background")


def _record(out: Path, pid: str) -> dict:
    return json.loads((out / "records" / f"{pid}.json").read_text())


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("executors")
    grid = _grid(tmp, tmp / "local", VARIANTS)
    assert main(["sweep", str(grid), "--no-progress"]) == 0
    return tmp, tmp / "local"


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                      memory_limit=0) as c:
        yield c


def _dask(cluster) -> str:
    return "dask://" + cluster.scheduler_address.removeprefix("tcp://")


def test_a_dask_cluster_gives_the_local_table(local, cluster):
    tmp, ref = local
    grid = _grid(tmp, tmp / "dask", VARIANTS)
    assert main(["sweep", str(grid), "--executor", _dask(cluster), "--no-progress"]) == 0
    assert _metrics(tmp / "dask") == _metrics(ref) and len(_metrics(ref)) == 2
    assert all(r["status"] == "ok" for r in _metrics(ref))
    for pid in ("gfl__s0", "none__s0"):
        rec = _record(tmp / "dask", pid)
        assert rec["executor"] == "dask" and rec["job_id"] and rec["starts"] == 1  # ran in a worker's task
        assert _trained(tmp / "dask", pid) == _trained(ref, pid)  # the same model, bit for bit
    assert _trained(ref, "gfl__s0")[1]["anchors"] > 0  # the Fig. 2 pass ran inside the point's task
    assert _trained(ref, "none__s0")[1] is None


def test_a_worker_killed_mid_point_ends_with_the_point_rerun(local, cluster):
    tmp, ref = local
    out = tmp / "killed"
    grid = _grid(tmp, out, {"gfl": {}})
    result: dict = {}
    driver = threading.Thread(target=lambda: result.update(run_sweep(grid, executor=_dask(cluster), progress=False)))
    driver.start()
    path, deadline = out / "records" / "gfl__s0.json", time.time() + 300
    while time.time() < deadline:
        rec = json.loads(path.read_text()) if path.exists() else {}
        if rec.get("status") == "running":
            break
        time.sleep(0.1)
    assert rec.get("status") == "running" and rec["executor"] == "dask" and rec["host"] == socket.gethostname()
    time.sleep(2)  # the notebook is under way
    os.kill(rec["worker_pid"], signal.SIGKILL)
    driver.join(600)
    assert not driver.is_alive() and result["failed"] == 0 and result["ran"] == 1
    final = _record(out, "gfl__s0")
    assert final["status"] == "ok" and final["starts"] == 2  # the killed start, then the rerun
    assert not pid_alive(rec["pid"], rec["pid_started"])  # the killed worker's point died with it
    assert _metrics(out) == _metrics(ref)[:1] and _trained(out, "gfl__s0") == _trained(ref, "gfl__s0")


def test_submitits_local_cluster_runs_the_tiny_grid(local):
    tmp, ref = local
    out = tmp / "submitit"
    grid = _grid(tmp, out, VARIANTS)
    assert main(["sweep", str(grid), "--executor", "submitit-local", "--no-progress"]) == 0
    assert _metrics(out) == _metrics(ref)
    for pid in ("gfl__s0", "none__s0"):
        rec = _record(out, pid)
        assert rec["executor"] == "submitit-local" and rec["job_id"] and rec["starts"] == 1
        assert _trained(out, pid) == _trained(ref, pid)
    assert (out / "submitit").is_dir()  # submitit's job files, beside the runs


def test_a_dead_running_record_is_rerun_and_a_live_one_is_not_started_twice(local, capsys):
    tmp, ref = local
    out = tmp / "stale"
    grid = _grid(tmp, out, VARIANTS)
    g = load_grid(grid)
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "600"])
    try:
        (out / "records").mkdir(parents=True)
        for p, proc in zip(g.points, (dead, live)):  # gfl: its process is gone; none: it still runs
            rec = dict(variant=p.variant, seed=p.seed, command=command(g, p), status="running", executor="local",
                       host=socket.gethostname(), pid=proc.pid, pid_started=process_started(proc.pid), starts=1)
            (out / "records" / f"{p.id}.json").write_text(json.dumps(rec))
        assert main(["sweep", str(grid), "--no-progress"]) == 0
        assert "2 points: 1 run, 0 already done, 0 failed, 1 running elsewhere" in capsys.readouterr().out
        assert _record(out, "gfl__s0")["status"] == "ok" and _record(out, "gfl__s0")["starts"] == 2
        assert _record(out, "none__s0") == dict(rec, pid=live.pid)  # left alone
        assert not (out / "runs" / "none__s0").exists()
        rows = _metrics(out)
        assert rows[0] == _metrics(ref)[0] and rows[1]["status"] == "running" and rows[1]["AP"] == ""
        # chapter 7 counts a running row as not run yet, not as failed
        df = read_results(out / "results.csv")
        info, stats = run_info(df, {}), variant_stats(df, ["gfl", "none"])
        assert (info["ok"], info["failed"], info["missing"]) == (1, 0, 1)
        assert (stats.loc["none", "failed"], stats.loc["none", "missing"]) == (0, 1)
    finally:
        live.kill()
        live.wait()
    assert alive(_record(out, "none__s0")) is False  # now dead: the next sweep reruns it


def _fake_slurm(bin_dir: Path) -> None:
    """``sbatch`` that keeps the script and answers job 4242; ``sacct`` that says RUNNING for ids
    ending in 1, FAILED for 2, and knows no other."""
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\ncp "$1" {bin_dir}/script.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "sacct").write_text("#!/bin/bash\necho 'JobID|State|NodeList'\nfor a in \"$@\"; do case $a in\n"
                                   "  *1) echo \"$a|RUNNING|node7\";; *2) echo \"$a|FAILED|node7\";; esac; done\n")
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 1\n")  # submitit looks for it to tell a Slurm host
    for f in ("sbatch", "sacct", "srun"):
        (bin_dir / f).chmod((bin_dir / f).stat().st_mode | stat.S_IEXEC)


def test_slurm_submits_one_job_per_point_with_its_resources_and_reads_sacct(tmp_path, monkeypatch):
    _fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    backend = open_backend("slurm", None, tmp_path / "submitit", SlurmOptions("gpu", 90, 4, 1))
    assert backend.name == "slurm" and backend.max_in_flight is None  # Slurm queues every point
    fut, job_id = backend.submit(print, "a point")
    assert job_id == "4242"
    script = (tmp_path / "bin" / "script.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --gpus-per-node=1"):
        assert line in script
    assert alive(dict(status="running", executor="slurm", job_id="5551")) is True
    assert alive(dict(status="running", executor="slurm", job_id="5552")) is False  # ended without a record
    assert alive(dict(status="running", executor="slurm", job_id="5553")) is None  # sacct does not know it
    # job 4242 FAILED without a result: its future raises, and the driver hands the point over again
    assert "has not produced any output (state: FAILED)" in str(fut.exception(timeout=120))


def test_dry_run_on_the_coco_grid_prints_every_command_and_runs_nothing(tmp_path, capsys):
    coco = tmp_path / "coco"
    make_dataset(coco, num_train=4, num_val=2, seed=1, progress=False)
    (train_ann, train_img), (val_ann, val_img) = dataset_paths(coco, "train"), dataset_paths(coco, "val")
    grid_file = ROOT / "experiments" / "ablations" / "grid_coco.yaml"
    sets = ["--set", f"train_ann={train_ann}", "--set", f"train_images={train_img}", "--set", f"val_ann={val_ann}",
            "--set", f"val_images={val_img}"]
    g = load_grid(grid_file)
    assert not g.out.exists()
    assert main(["sweep", str(grid_file), "--dry-run", *sets]) == 0
    printed = capsys.readouterr().out
    over = load_grid(grid_file, dict(train_ann=str(train_ann), train_images=str(train_img), val_ann=str(val_ann),
                                     val_images=str(val_img)))
    demo = load_grid(ROOT / "experiments" / "ablations" / "grid.yaml")
    assert len(over.points) == len(demo.variants) * len(over.seeds) >= 63
    for p in over.points:
        assert f"{p.id} [missing]\n  {command(over, p)}\n" in printed
        assert f"-p train_ann {train_ann} " in command(over, p) and "-p config gfl_r50_fpn_1x_coco " in command(over, p)
    assert f"val_images: {val_img} (exists)" in printed
    assert not g.out.exists() and not (coco / "runs").exists()  # nothing ran, nothing written
    # the placeholders as committed: the same commands, and the missing data named
    assert main(["sweep", str(grid_file), "--dry-run", "--only", "gfl"]) == 2
    err = capsys.readouterr().err
    assert "train_ann: /data/coco/annotations/instances_train2017.json is not an existing file" in err


def test_the_coco_grid_is_the_committed_design_at_the_papers_scale():
    path = ROOT / "experiments" / "ablations" / "grid_coco.yaml"
    coco, demo = load_grid(path), load_grid(ROOT / "experiments" / "ablations" / "grid.yaml")
    # the demo's seeds are sized by its pilot; COCO's 5,000 validation images keep the paper's 3
    assert coco.variants == demo.variants and len(coco.variants) == 21 and coco.seeds == [0, 1, 2]
    assert "variants" not in yaml.safe_load(path.read_text())  # read from grid.yaml: the two cannot drift apart
    assert read_grid(path)["variants"] == demo.variants  # as chapter 7 reads it
    par = coco.parameters
    assert (par["config"], par["epochs"], par["device"]) == ("gfl_r50_fpn_1x_coco", 12, "cuda")
    assert par["train_ann"] == "/data/coco/annotations/instances_train2017.json"
    assert par["val_images"] == "/data/coco/val2017" and coco.threads > 1 and coco.out != demo.out
    assert "--executor slurm" in path.read_text()


def test_a_dry_run_names_a_bad_override_and_parameter(tmp_path, capsys):
    grid = _grid(tmp_path, tmp_path / "o", {"gfl": {}, "typo": {"reg_maxx": 8}, "bad": {"quality": "nonsense"}})
    assert main(["sweep", str(grid), "--dry-run", "--set", "epoch=2"]) == 2
    err = capsys.readouterr().err
    assert "variant 'typo': unknown config field 'reg_maxx'" in err
    assert "variant 'bad': " in err and "quality must be one of" in err
    assert "parameters epoch not parameters of 03_training.py" in err
    assert err.strip().splitlines()[-1].startswith("gflnb: error: ")
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["sweep", str(grid), "--executor"])
    assert main(["sweep", str(grid), "--executor", "ray://x"]) == 2
    assert "unknown executor 'ray://x'" in capsys.readouterr().err
