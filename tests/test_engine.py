"""The real path end to end: synth -> train -> evaluate, and exact resumption."""
import json
import math

import pytest
import torch

from gflnb.cli import main
from gflnb.config import get_config
from gflnb.data.synth import dataset_paths, make_dataset
from gflnb.engine.train import lr_at


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, num_train=16, num_val=6, seed=1, progress=False)
    return root


def test_synth_is_deterministic_and_records_ambiguity(tmp_path, tiny):
    make_dataset(tmp_path, num_train=16, num_val=6, seed=1, progress=False)
    a = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    b = json.loads((tiny / "annotations" / "instances_train.json").read_text())
    assert a == b
    assert (tmp_path / "train" / "train_000003.jpg").read_bytes() == (tiny / "train" / "train_000003.jpg").read_bytes()
    anns = a["annotations"]
    assert anns and all(len(x["edge_ambiguity"]) == 4 and all(0 <= v <= 1 for v in x["edge_ambiguity"]) for x in anns)
    assert any(max(x["edge_blur"]) > 0 for x in anns) and any(max(x["edge_blur"]) == 0 for x in anns)
    sizes = [max(x["bbox"][2:]) for x in anns]
    assert min(sizes) >= 12
    from pycocotools.coco import COCO
    coco = COCO(str(tmp_path / "annotations" / "instances_val.json"))
    assert sorted(coco.getCatIds()) == [3, 7, 11, 20]


def test_lr_schedule_warmup_and_steps():
    cfg = get_config("gfl_r50_fpn_1x_coco")
    assert lr_at(cfg, 0.01, 0, 0) == pytest.approx(1e-5)
    assert lr_at(cfg, 0.01, 0, 250) == pytest.approx(0.01 * (0.001 + 0.999 * 0.5))
    assert lr_at(cfg, 0.01, 7, 10_000) == pytest.approx(0.01)
    assert lr_at(cfg, 0.01, 8, 10_000) == pytest.approx(0.001)
    assert lr_at(cfg, 0.01, 11, 10_000) == pytest.approx(0.0001)
    # under a time budget the decay also follows the fraction spent: 8/12 of it, then 11/12
    assert lr_at(cfg, 0.01, 2, 10_000, budget_frac=0.5) == pytest.approx(0.01)
    assert lr_at(cfg, 0.01, 2, 10_000, budget_frac=0.7) == pytest.approx(0.001)
    assert lr_at(cfg, 0.01, 2, 10_000, budget_frac=0.95) == pytest.approx(0.0001)


def _train(tiny, work, *extra):
    ann, imgs = dataset_paths(tiny, "train")
    return main(["train", "--config", "gfl_cpu_demo", "--train-ann", str(ann), "--train-images", str(imgs),
                 "--work-dir", str(work), "--no-progress", "--set", "warmup_iters=3", "--set", "batch_size=4",
                 *extra])


def _log(work):
    return [json.loads(ln) for ln in (work / "log.jsonl").read_text().splitlines()]


def test_train_then_evaluate_end_to_end(tiny, tmp_path, capsys):
    work = tmp_path / "run"
    ann, imgs = dataset_paths(tiny, "val")
    assert _train(tiny, work, "--epochs", "10", "--val-ann", str(ann), "--val-images", str(imgs)) == 0
    log = [r for r in _log(work) if "loss" in r]
    assert len(log) == 40 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    first = sum(r["loss"] for r in log[:5]) / 5
    last = sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.85 * first, (first, last)
    assert {"lr", "loss_cls", "loss_bbox", "loss_dfl", "data_time", "step_time", "imgs_per_s"} <= set(log[0])
    metrics = json.loads((work / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert (work / "epoch_10.pth").exists() and (work / "latest.pth").exists()
    out = tmp_path / "dets.json"
    capsys.readouterr()
    assert main(["evaluate", "--config", "gfl_cpu_demo", "--checkpoint", str(work / "latest.pth"), "--ann", str(ann),
                 "--images", str(imgs), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "per-class AP" in printed
    dets = json.loads(out.read_text())
    assert dets and {"image_id", "category_id", "bbox", "score"} == set(dets[0])
    assert {d["category_id"] for d in dets} <= {3, 7, 11, 20}
    from pycocotools.coco import COCO
    coco = COCO(str(ann))
    coco.loadRes(str(out))  # pycocotools accepts the results file


@pytest.mark.parametrize("ema", [False, True])
def test_resume_gives_identical_weights_and_log(tiny, tmp_path, ema):
    extra = ("--set", "ema_decay=0.9", "--set", "ema_tau=2") if ema else ()
    torch.use_deterministic_algorithms(True)
    try:
        a, b = tmp_path / "a", tmp_path / "b"
        assert _train(tiny, a, "--epochs", "2", "--max-iters", "7", *extra) == 0
        assert _train(tiny, b, "--epochs", "2", "--max-iters", "3", *extra) == 0  # stops mid-epoch 1
        assert json.loads((b / "metrics.json").read_text())["iterations"] == 3
        assert _train(tiny, b, "--epochs", "2", "--max-iters", "7", "--resume", *extra) == 0  # crosses an epoch end
        sa = torch.load(a / "latest.pth", weights_only=True)
        sb = torch.load(b / "latest.pth", weights_only=True)
        assert sa["meta"]["global_iter"] == sb["meta"]["global_iter"] == 7
        assert ("train_state_dict" in sa) == ema
        for part in ("state_dict", "train_state_dict") if ema else ("state_dict",):
            for k in sa[part]:
                assert torch.equal(sa[part][k], sb[part][k]), (part, k)
        if ema:  # the evaluated weights are the average, not the last step's
            assert sa["meta"]["ema_updates"] == 7
            assert not torch.equal(sa["state_dict"]["bbox_head.gfl_cls.weight"],
                                   sa["train_state_dict"]["bbox_head.gfl_cls.weight"])
        keys = ("iter", "epoch", "lr", "loss_cls", "loss_bbox", "loss_dfl")
        assert [[r[k] for k in keys] for r in _log(a)] == [[r[k] for k in keys] for r in _log(b)]
    finally:
        torch.use_deterministic_algorithms(False)


def test_ema_follows_the_ramped_decay():
    from gflnb.engine.ema import make_ema
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = make_ema(model, decay=0.9, tau=2.0)
    expected = None
    for n in range(4):
        with torch.no_grad():
            model[0].weight.add_(torch.randn(2, 3))
        model(torch.randn(5, 3))  # moves the BatchNorm statistics and its counter
        w = model[0].weight.detach().clone()
        if expected is None:
            expected = w  # the first update copies
        else:
            d = 0.9 * (1 - math.exp(-n / 2.0))
            expected = d * expected + (1 - d) * w
        ema.update_parameters(model)
    torch.testing.assert_close(ema.module[0].weight, expected, rtol=1e-6, atol=1e-7)
    assert int(ema.module[1].num_batches_tracked) == 4  # integer buffers are copied, not averaged
    assert not torch.equal(ema.module[1].running_mean, model[1].running_mean)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--config", "nope", "--train-ann", str(tmp_path / "x.json"), "--train-images",
                 str(tmp_path), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gflnb: error:")
    assert main(["evaluate", "--config", "gfl_cpu_demo", "--checkpoint", str(tmp_path / "none.pth"), "--ann",
                 str(tmp_path / "a.json"), "--images", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_fcos_peer_of_the_demo_trains_and_predicts(tiny):
    """benchmarks/fcos_demo.py: torchvision's FCOS behind the engine's loss/predict interface."""
    import importlib.util
    from pathlib import Path

    from gflnb.data.coco import CocoDetection, make_loader
    spec = importlib.util.spec_from_file_location("fcos_demo", Path(__file__).parents[1] / "benchmarks" / "fcos_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = get_config("gfl_cpu_demo", **mod.FCOS_RECIPE)
    ann, imgs = dataset_paths(tiny, "train")
    ds = CocoDetection(ann, imgs, cfg, train=False)
    images, targets, metas = next(iter(make_loader(ds, [[0, 1, 2]])))
    torch.manual_seed(0)
    model = mod.FCOSPeer(cfg)
    losses = model.loss(images, targets, metas)
    assert {"classification", "bbox_regression", "bbox_ctrness"} == set(losses)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    dets = model.predict(images, metas, rescale=True)
    assert len(dets) == 3 and all(d["boxes"].shape[1] == 4 for d in dets)


def test_cpu_amp_trains_in_bf16_where_native_and_warns_elsewhere(tiny, tmp_path, monkeypatch, capsys):
    import gflnb.engine.train as T
    seen = []
    real = torch.autocast

    def spy(*a, **k):
        seen.append((k.get("dtype"), k.get("enabled")))
        return real(*a, **k)
    monkeypatch.setattr(T.torch, "autocast", spy)
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: True)
    assert _train(tiny, tmp_path / "a", "--max-iters", "2", "--set", "cpu_amp=True") == 0
    assert seen and all(s == (torch.bfloat16, True) for s in seen)
    assert all(math.isfinite(r["loss"]) for r in _log(tmp_path / "a") if "loss" in r)
    seen.clear()
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: False)
    capsys.readouterr()
    assert _train(tiny, tmp_path / "b", "--max-iters", "2", "--set", "cpu_amp=True") == 0
    assert "gflnb: warning: cpu_amp: no native bf16 here" in capsys.readouterr().err
    assert seen and not any(enabled for _, enabled in seen)


def test_a_new_run_starts_a_new_log_and_records_its_budget_kind(tiny, tmp_path):
    work = tmp_path / "run"
    assert _train(tiny, work, "--max-iters", "3") == 0
    assert _train(tiny, work, "--max-iters", "2") == 0  # not --resume: the first run's lines are gone
    assert [r["iter"] for r in _log(work)] == [1, 2]
    m = json.loads((work / "metrics.json").read_text())
    assert m["budget"] == "iterations" and m["machine"]["torch"] == torch.__version__ and m["machine"]["isa"]


def test_benchmark_times_the_evaluate_path_and_names_the_machine(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["benchmark", "--config", "gfl_cpu_demo", "--shape", "64", "96", "--runs", "2", "--warmup", "1",
                 "--json", str(out)]) == 0
    line = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["path"] == "evaluate" and r["median_s"] > 0 and r["padded"] == [64, 96]
    assert f"evaluate path, on {r['cpu']}, {r['isa']} kernels" in line and f"torch {torch.__version__}" in line
