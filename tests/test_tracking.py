"""The trackers are sinks: what TensorBoard and MLflow receive equals log.jsonl and results.csv,
training is unchanged with or without them, and importing a sweep twice adds nothing."""
import csv
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from gflnb.book import ROOT
from gflnb.cli import main
from gflnb.config import get_config
from gflnb.data.synth import dataset_paths, make_dataset
from gflnb.engine.tblog import EVENT_GLOB, scalars
from gflnb.study.tracking import TAG_HASH, TAG_POINT, log_sweep_to_mlflow, record_hash, store_uri
from gflnb.engine.train import TrainOptions, train

# a committed sweep that no longer changes: the first ablation sweep's 30 records and its table
COMMITTED = ROOT / "experiments" / "ablations" / "v1_6epochs"
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TIMINGS = ("data_time", "step_time", "imgs_per_s")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("track")
    make_dataset(root, num_train=8, num_val=3, seed=2, progress=False)
    return root


def _train(tiny, work, epochs=2, **kw):
    """gfl_cpu_demo, 2 iterations an epoch, evaluated after every epoch."""
    cfg = get_config("gfl_cpu_demo", num_classes=4, batch_size=4, warmup_iters=2)
    ann, imgs = dataset_paths(tiny, "train")
    vann, vimgs = dataset_paths(tiny, "val")
    kw = dict(dict(progress=False, eval_every=1, keep_epoch_checkpoints=False), **kw)
    return train(cfg, TrainOptions(str(ann), str(imgs), str(work), str(vann), str(vimgs), epochs=epochs, **kw))


def _log(work):
    return [json.loads(ln) for ln in (work / "log.jsonl").read_text().splitlines()]


def _events(work) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(work), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(work) -> dict[str, list[tuple[int, float]]]:
    """log.jsonl's records as TensorBoard stores them: float32 values at step = iteration."""
    out: dict[str, list] = {}
    for rec in _log(work):
        for tag, v in scalars(rec).items():
            out.setdefault(tag, []).append((rec["iter"], float(np.float32(v))))
    return out


def test_tensorboard_scalars_equal_the_log_and_change_no_number(tiny, tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    m = _train(tiny, on)
    events = _events(on)
    assert events == _expected(on)
    terms = {t for t in events if t.startswith("loss/")}
    assert {"loss/loss", "loss/loss_cls", "loss/loss_bbox", "loss/loss_dfl"} <= terms
    assert {"train/lr", "time/step_time", "time/data_time"} <= set(events)
    assert [s for s, _ in events["loss/loss"]] == [1, 2, 3, 4]
    # every evaluation: after epoch 1 (eval_every) and the final one
    for k in AP_KEYS:
        assert [s for s, _ in events[f"eval/{k}"]] == [2, 4]
    assert events["eval/AP"][-1][1] == float(np.float32(m["metrics"]["AP"]))
    _train(tiny, off, tensorboard=False)
    assert not list(off.glob(EVENT_GLOB))
    strip = [{k: v for k, v in r.items() if k not in TIMINGS} for r in _log(on)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMINGS} for r in _log(off)]


def test_a_resumed_run_hides_what_a_killed_one_logged_past_its_checkpoint(tiny, tmp_path):
    work = tmp_path / "w"
    _train(tiny, work, epochs=2, max_iters=3)  # a checkpoint at iteration 3
    events = _events(work)
    assert events["loss/loss"][-1][0] == 3
    log = [ln for ln in (work / "log.jsonl").read_text().splitlines()]
    # a kill after iteration 3's checkpoint: the log (and its sinks) went on to iteration 4
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(work))
    w.add_scalar("loss/loss", 99.0, 4)
    w.close()
    (work / "log.jsonl").write_text("\n".join(log + [json.dumps(dict(iter=4, epoch=2, loss=99.0))]) + "\n")
    _train(tiny, work, epochs=2, resume=True)
    events = _events(work)
    assert events == _expected(work)
    assert [s for s, _ in events["loss/loss"]] == [1, 2, 3, 4] and 99.0 not in dict(events["loss/loss"]).values()


def test_a_missing_or_failing_tensorboard_warns_once_and_training_goes_on(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = _train(tiny, tmp_path / "a", epochs=1, max_iters=1, eval_every=0)
    said = [str(w.message) for w in caught if "TensorBoard" in str(w.message)]
    assert len(said) == 1 and "tensorboard package is missing" in said[0] and "\n" not in said[0]
    assert m["iterations"] == 1 and not list((tmp_path / "a").glob(EVENT_GLOB))
    monkeypatch.undo()

    from torch.utils.tensorboard import SummaryWriter

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(SummaryWriter, "add_scalar", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = _train(tiny, tmp_path / "b", epochs=1, eval_every=0)
    said = [str(w.message) for w in caught if "TensorBoard" in str(w.message)]
    assert len(said) == 1 and "disk full" in said[0]
    assert m["iterations"] == 2 and len([r for r in _log(tmp_path / "b") if "loss" in r]) == 2


def _committed_copy(tmp_path: Path) -> Path:
    """The committed sweep's records and table, as a sweep output folder of its own."""
    out = tmp_path / "ablations"
    shutil.copytree(COMMITTED / "records", out / "records")
    shutil.copy(COMMITTED / "results.csv", out / "results.csv")
    return out


def _runs(out: Path):
    import mlflow
    mlflow.set_tracking_uri(store_uri(out))
    try:
        return mlflow.search_runs(experiment_names=[out.name])
    finally:
        mlflow.set_tracking_uri(None)


def _assert_runs_equal_table(out: Path, df) -> None:
    """One run per recorded row of results.csv, with its APs (to the table's 2 decimals) and params."""
    with open(out / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] in ("ok", "failed")]
    assert rows and len(df) == len(rows)
    by_point = {r[f"tags.{TAG_POINT}"]: r for _, r in df.iterrows()}
    for row in rows:
        run = by_point[f"{row['variant']}__s{row['seed']}"]
        assert run["params.variant"] == row["variant"] and run["params.seed"] == row["seed"]
        assert run["params.command"] == row["command"]
        assert run["tags.gflnb.status"] == row["status"]
        for k in AP_KEYS:
            if row[k]:
                assert f"{run[f'metrics.{k}']:.2f}" == row[k], (row["variant"], row["seed"], k)


def test_the_committed_sweep_imports_once_equal_to_its_table(tmp_path, capsys):
    from mlflow import MlflowClient
    out = _committed_copy(tmp_path)
    records = {f.stem: json.loads(f.read_text()) for f in (out / "records").glob("*.json")}
    first = next(iter(records))
    (out / "runs" / first).mkdir(parents=True)
    (out / "runs" / first / "metrics.json").write_text(json.dumps(dict(metrics=records[first]["metrics"])))

    assert log_sweep_to_mlflow(out) == len(records)
    df = _runs(out)
    _assert_runs_equal_table(out, df)
    assert log_sweep_to_mlflow(out) == 0  # the same records again: nothing new
    assert main(["mlflow-import", str(out)]) == 0
    assert capsys.readouterr().out.startswith("0 runs imported")
    assert len(_runs(out)) == len(records)

    client = MlflowClient(tracking_uri=store_uri(out))
    run_id = {r[f"tags.{TAG_POINT}"]: r.run_id for _, r in df.iterrows()}[first]
    assert {a.path for a in client.list_artifacts(run_id)} == {f"{first}.json", "metrics.json"}
    with open(client.download_artifacts(run_id, f"{first}.json", str(tmp_path))) as f:
        assert json.load(f) == records[first]

    # a changed record (here: the Fig. 2 summary added after the run) replaces its point's run
    changed = dict(records[first], background=dict(n=1))
    (out / "records" / f"{first}.json").write_text(json.dumps(changed, indent=1))
    assert log_sweep_to_mlflow(out) == 1
    df = _runs(out)
    assert len(df) == len(records)
    mine = df[df[f"tags.{TAG_POINT}"] == first]
    assert len(mine) == 1 and mine[f"tags.{TAG_HASH}"].item() == record_hash(changed) != record_hash(records[first])
    assert mine["run_id"].item() != run_id


def _fake_point(grid, p):
    """A finished point without training: its record, as run_point writes it."""
    from gflnb.files import atomic_write_text
    from gflnb.study.sweep import command, record_path
    ok = p.variant != "broken"
    ap = 10.0 + p.seed + len(p.variant) / 7
    rec = dict(variant=p.variant, seed=p.seed, overrides=p.overrides, command=command(grid, p), parameters={},
               status="ok" if ok else "failed", error="" if ok else "exit 1: ValueError: nonsense",
               iterations=4 if ok else None, metrics={k: ap + i for i, k in enumerate(AP_KEYS)} if ok else {},
               eval_history=[dict(epoch=1, iter=2, AP=ap / 2), dict(epoch=2, iter=4, AP=ap)] if ok else [])
    atomic_write_text(record_path(grid, p), json.dumps(rec, indent=1))
    return rec


def _fake_grid(tmp_path: Path) -> Path:
    """Two variants (one failing) x two seeds, of variants without a Fig. 2 summary."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(dict(notebook="notebooks/03_training.py", out=str(tmp_path / "grid_out"),
                                        seeds=[0, 1], parameters=dict(config="gfl_cpu_demo"),
                                        variants=dict(plain={"overrides": {}}, broken={"overrides": {"quality": "x"}}))))
    return grid


def test_sweep_mlflow_logs_every_point_equal_to_the_table(tmp_path, monkeypatch):
    grid, out = _fake_grid(tmp_path), tmp_path / "grid_out"
    monkeypatch.setattr("gflnb.study.sweep.run_point", _fake_point)
    assert main(["sweep", str(grid), "--mlflow", "--no-progress", "--jobs", "1"]) == 0
    df = _runs(out)
    _assert_runs_equal_table(out, df)
    assert sorted(df["status"]) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    # the learning curve: the record's eval_history, step = epoch
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=store_uri(out))
    run_id = df.loc[df[f"tags.{TAG_POINT}"] == "plain__s1", "run_id"].item()
    rec = json.loads((out / "records" / "plain__s1.json").read_text())
    curve = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "eval/AP"))
    assert curve == [(e["epoch"], e["AP"]) for e in rec["eval_history"]] and len(curve) == 2
    assert main(["mlflow-import", str(grid)]) == 0  # the grid file names the same store
    assert len(_runs(out)) == 4


def test_mlflow_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    assert main(["mlflow-import", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gflnb: error:") and "no records/" in err and err.count("\n") == 1
    ran = []
    monkeypatch.setattr("gflnb.study.sweep.run_point", lambda grid, p: ran.append(p))
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert main(["sweep", str(_fake_grid(tmp_path)), "--mlflow", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "needs the mlflow package" in err and err.count("\n") == 1
    assert ran == []  # said before any point runs
