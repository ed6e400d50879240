"""Bad input, numerical faults, crashes and resumption: nothing lost, one clear line."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gflnb import build_model, save_checkpoint
from gflnb.engine.checkpoint import atomic_save
from gflnb.cli import main
from gflnb.config import get_config
from gflnb.data.synth import dataset_paths, make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    make_dataset(root, num_train=16, num_val=4, seed=5, progress=False)
    return root


def _coco(tmp_path, images, anns, cats=None, write_images=True):
    d = tmp_path / "imgs"
    d.mkdir(exist_ok=True)
    if write_images:
        for im in images:
            cv2.imwrite(str(d / im["file_name"]), np.full((im["height"], im["width"], 3), 127, np.uint8))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats or [dict(id=1, name="x")])))
    return ann, d


IMG = [dict(id=1, file_name="a.png", width=64, height=64)]
BOX = dict(id=1, image_id=1, category_id=1, bbox=[4, 4, 20, 20], area=400, iscrowd=0)


def _train_cli(ann, imgs, work, *extra):
    return main(["train", "--config", "gfl_cpu_demo", "--train-ann", str(ann), "--train-images", str(imgs),
                 "--work-dir", str(work), "--no-progress", "--max-iters", "1", *extra])


def _case_missing_image(tmp):
    ann, d = _coco(tmp, IMG, [BOX])
    (d / "a.png").unlink()
    return _train_cli(ann, d, tmp / "w"), "image 1: image file not found"


def _case_corrupt_image(tmp):
    ann, d = _coco(tmp, IMG, [BOX])
    (d / "a.png").write_bytes(b"\x89PNG garbage")
    return _train_cli(ann, d, tmp / "w"), "image 1: cannot decode image"


def _case_not_json(tmp):
    (tmp / "ann.json").write_text("{oops")
    (tmp / "imgs").mkdir()
    return _train_cli(tmp / "ann.json", tmp / "imgs", tmp / "w"), "is not valid JSON"


def _case_missing_keys(tmp):
    (tmp / "ann.json").write_text(json.dumps(dict(images=[], annotations=[])))
    (tmp / "imgs").mkdir()
    return _train_cli(tmp / "ann.json", tmp / "imgs", tmp / "w"), "lacks 'categories'"


def _case_unknown_image(tmp):
    ann, d = _coco(tmp, IMG, [dict(BOX, image_id=9)])
    return _train_cli(ann, d, tmp / "w"), "annotation 1 refers to unknown image id 9"


def _case_unknown_category(tmp):
    ann, d = _coco(tmp, IMG, [dict(BOX, category_id=4)])
    return _train_cli(ann, d, tmp / "w"), "annotation 1 refers to unknown category id 4"


def _case_nan_box(tmp):
    ann, d = _coco(tmp, IMG, [dict(BOX, bbox=[1, 2, float("nan"), 4])])
    return _train_cli(ann, d, tmp / "w"), "non-finite bbox"


def _case_empty_dataset(tmp):
    ann, d = _coco(tmp, IMG, [])
    return _train_cli(ann, d, tmp / "w"), "no usable images"


def _case_only_bad_boxes(tmp):
    ann, d = _coco(tmp, IMG, [dict(BOX, bbox=[4, 4, -3, 5]), dict(BOX, id=2, bbox=[100, 100, 5, 5])])
    return _train_cli(ann, d, tmp / "w", "--set", "filter_empty_gt=False"), None


def _case_unknown_preset(tmp):
    ann, d = _coco(tmp, IMG, [BOX])
    return main(["train", "--config", "gfl_r51", "--train-ann", str(ann), "--train-images", str(d),
                 "--work-dir", str(tmp / "w")]), "unknown preset 'gfl_r51'"


def _case_unknown_field(tmp):
    ann, d = _coco(tmp, IMG, [BOX])
    return _train_cli(ann, d, tmp / "w", "--set", "learning_rate=0.1"), "unknown config field 'learning_rate'"


def _case_wrong_type(tmp):
    ann, d = _coco(tmp, IMG, [BOX])
    return _train_cli(ann, d, tmp / "w", "--set", "epochs=twelve"), "config field 'epochs' expects an int"


def _case_checkpoint_mismatch(tmp):
    ann, d = _coco(tmp, IMG, [BOX])
    save_checkpoint(build_model("gfl_r18_fpn_1x_coco", num_classes=1), tmp / "r18.pth")
    return main(["evaluate", "--config", "gfl_cpu_demo", "--checkpoint", str(tmp / "r18.pth"), "--ann", str(ann),
                 "--images", str(d), "--out", str(tmp / "o.json")]), "checkpoint does not fit the model: unexpected keys (18): neck.fpn_convs.3"


def _case_not_a_checkpoint(tmp):
    ann, d = _coco(tmp, IMG, [BOX])
    (tmp / "x.pth").write_bytes(b"not a checkpoint")
    return main(["evaluate", "--config", "gfl_cpu_demo", "--checkpoint", str(tmp / "x.pth"), "--ann", str(ann),
                 "--images", str(d), "--out", str(tmp / "o.json")]), "cannot be loaded safely"


def _case_resume_without_checkpoint(tmp):
    ann, d = _coco(tmp, IMG, [BOX])
    return _train_cli(ann, d, tmp / "w", "--resume"), "--resume: no checkpoint"


BAD_INPUTS = {name[len("_case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("_case_")}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(tmp_path, capsys, name):
    code, expected = BAD_INPUTS[name](tmp_path)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("gflnb:")]
    if expected is None:  # boxes that the reference drops: skipped with a counted warning, training goes on
        assert code == 0 and "2 boxes skipped" in err
        return
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("gflnb: error:") and expected in lines[0], err
    assert "Traceback" not in err
    print(f"BAD_INPUT | {name} | {lines[0]}")


@pytest.mark.parametrize("damage, expected", [("missing", "image 1: image file not found"),
                                               ("corrupt", "image 1: cannot decode image")])
def test_bad_images_are_rejected_before_any_setup_warning(tmp_path, capsys, monkeypatch, damage, expected):
    """On every CPU: set-up that would warn (cpu_amp where bf16 is not native, a wall-clock budget)
    comes after the data checks, so bad data is the one line printed."""
    import gflnb.engine.train as T
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: False)
    ann, d = _coco(tmp_path, IMG, [BOX])
    if damage == "missing":
        (d / "a.png").unlink()
    else:
        (d / "a.png").write_bytes(b"\x89PNG garbage")
    code = _train_cli(ann, d, tmp_path / "w", "--set", "cpu_amp=True", "--max-minutes", "1")
    err = capsys.readouterr().err
    assert code == 2
    assert [ln for ln in err.splitlines() if ln.startswith("gflnb:")] == [ln for ln in err.splitlines()
                                                                        if ln.startswith("gflnb: error:")]
    assert len(err.strip().splitlines()) == 1 and expected in err, err


def test_clipped_boxes_are_counted(tmp_path):
    ann, d = _coco(tmp_path, IMG, [dict(BOX, bbox=[50, 50, 30, 30])])
    from gflnb.data.coco import CocoDetection
    with pytest.warns(UserWarning, match="1 boxes extend past their image and are clipped"):
        ds = CocoDetection(ann, d, get_config("gfl_cpu_demo", num_classes=1), train=True)
    assert ds[0]["boxes"].max() <= 320


# ------------------------------------------------------------------ numerical faults
def test_nan_loss_stops_with_iteration_and_term_and_keeps_last_checkpoint(tiny, tmp_path, monkeypatch):
    from gflnb.model.head import GFLHead
    from gflnb.engine.train import TrainingDiverged, TrainOptions, train
    calls = {"n": 0}
    real = GFLHead.loss

    def poisoned(self, *a, **k):
        calls["n"] += 1
        out = real(self, *a, **k)
        if calls["n"] in (4, 5):
            out["loss_dfl"] = out["loss_dfl"] * float("nan")
        return out

    monkeypatch.setattr(GFLHead, "loss", poisoned)
    ann, imgs = dataset_paths(tiny, "train")
    cfg = get_config("gfl_cpu_demo", num_classes=4, batch_size=4, warmup_iters=2)
    work = tmp_path / "w"
    with pytest.raises(TrainingDiverged, match=r"non-finite loss_dfl at iteration 4 \(epoch 1\)"):
        train(cfg, TrainOptions(str(ann), str(imgs), str(work), checkpoint_every=2, progress=False, max_iters=8))
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["meta"]["global_iter"] == 2  # the last good checkpoint survives
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    calls["n"] = 0
    m = train(cfg, TrainOptions(str(ann), str(imgs), str(tmp_path / "w2"), progress=False, max_iters=8,
                                skip_bad_batches=2))
    log = [json.loads(ln) for ln in (tmp_path / "w2" / "log.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "skipped_batch" for r in log) == 2 and m["iterations"] == 8


# ------------------------------------------------------------------ crashes
def _cli(work, tiny, *extra):
    ann, imgs = dataset_paths(tiny, "train")
    return [sys.executable, "-m", "gflnb", "train", "--config", "gfl_cpu_demo", "--train-ann", str(ann),
            "--train-images", str(imgs), "--work-dir", str(work), "--no-progress", "--deterministic",
            "--set", "batch_size=2", "--set", "warmup_iters=3", "--epochs", "2", "--max-iters", "14", *extra]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tiny, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    a, b = tmp_path / "a", tmp_path / "b"
    subprocess.run(_cli(a, tiny), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_cli(b, tiny, "--checkpoint-every", "3"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        lines = (b / "log.jsonl").read_text().splitlines() if (b / "log.jsonl").exists() else []
        if len(lines) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len((b / "log.jsonl").read_text().splitlines())
    assert 5 <= killed_at < 14, "the kill must land mid-run"
    assert torch.load(b / "latest.pth", weights_only=True)["meta"]["global_iter"] in (3, 6, 9, 12)
    assert not list(b.glob(".*.tmp"))
    subprocess.run(_cli(b, tiny, "--checkpoint-every", "3", "--resume"), check=True, env=env, capture_output=True)
    sa = torch.load(a / "latest.pth", weights_only=True)
    sb = torch.load(b / "latest.pth", weights_only=True)
    assert sa["meta"]["global_iter"] == sb["meta"]["global_iter"] == 14
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    la = [json.loads(x) for x in (a / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "log.jsonl").read_text().splitlines()]
    keys = ("iter", "epoch", "lr", "loss_cls", "loss_bbox", "loss_dfl", "loss")
    assert [[r[k] for k in keys] for r in la] == [[r[k] for k in keys] for r in lb]
    print(f"KILL_RESUME | killed after {killed_at} logged iterations | resumed to 14 | weights identical "
          f"({len(sa['state_dict'])} tensors) | log identical ({len(la)} lines)")


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    atomic_save({"v": torch.tensor(1)}, path)

    def dying_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # as a kill between writes would leave things

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


def test_an_interrupted_write_through_atomic_path_keeps_the_previous_file(tmp_path):
    from gflnb.files import atomic_path, atomic_write_text
    path = atomic_write_text(tmp_path / "sub" / "record.json", "old")  # the folder is made
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["record.json"]
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in path.parent.iterdir()] == ["record.json"]


def test_torn_log_line_is_dropped_on_resume(tmp_path):
    from gflnb.engine.train import JsonlLog
    p = tmp_path / "log.jsonl"
    p.write_text('{"iter": 1, "loss": 1.0}\n{"iter": 2, "loss": 0.9}\n{"iter": 3, "lo')
    log = JsonlLog(p, keep_until_iter=2)
    log.write({"iter": 3, "loss": 0.8})
    log.close()
    assert [json.loads(x)["iter"] for x in p.read_text().splitlines()] == [1, 2, 3]


# ------------------------------------------------------------------ fuzzing the data path
box_st = st.tuples(st.floats(0, 300), st.floats(0, 300), st.floats(1, 300), st.floats(1, 300))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=st.integers(24, 300), h=st.integers(24, 300), boxes=st.lists(box_st, max_size=6),
       flip=st.booleans(), scale=st.integers(64, 400))
def test_transforms_keep_boxes_inside_and_loss_finite(tmp_path_factory, w, h, boxes, flip, scale):
    from gflnb.data.coco import CocoDetection, Collate
    tmp = tmp_path_factory.mktemp("fz")
    anns = [dict(id=i + 1, image_id=1, category_id=1, bbox=list(b), area=b[2] * b[3], iscrowd=0)
            for i, b in enumerate(boxes)]
    ann, d = _coco(tmp, [dict(id=1, file_name="a.png", width=w, height=h)], anns)
    cfg = get_config("gfl_cpu_demo", num_classes=1, flip_prob=1.0 if flip else 0.0, img_scale=(scale, scale),
                     filter_empty_gt=False, min_size=1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(ann, d, cfg, train=True)
    s = ds[0]
    nh, nw = s["meta"]["img_shape"]
    b = s["boxes"]
    assert torch.isfinite(b).all()
    assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= nw).all() and (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= nh).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    torch.manual_seed(0)
    model = build_model(cfg)
    images, targets, metas = Collate(cfg)([s])
    losses = model.loss(images, targets, metas)
    assert all(torch.isfinite(v) for v in losses.values())
    if len(b) == 0:
        assert losses["loss_bbox"].item() == 0 and losses["loss_dfl"].item() == 0


def test_one_pixel_boxes_give_finite_losses():
    torch.manual_seed(0)
    model = build_model("gfl_cpu_demo", num_classes=2)
    images = torch.randn(1, 3, 64, 64)
    meta = [dict(img_shape=(64, 64), pad_shape=(64, 64), scale_factor=(1.0, 1.0))]
    targets = [dict(boxes=torch.tensor([[10.0, 10.0, 11.0, 11.0], [0.0, 0.0, 64.0, 64.0], [63, 63, 64, 64.0]]),
                    labels=torch.tensor([0, 1, 1]))]
    losses = model.loss(images, targets, meta)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------ evaluation during training
def test_eval_every_keeps_the_training_identical_and_records_each_ap(tiny, tmp_path):
    """Evaluating every epoch leaves the losses bit-identical (evaluation runs on the inference copy
    and draws no random numbers), and every evaluation's AP lands in metrics, checkpoint and log."""
    from gflnb.engine.train import TrainOptions, train
    ann, imgs = dataset_paths(tiny, "train")
    vann, vimgs = dataset_paths(tiny, "val")
    cfg = get_config("gfl_cpu_demo", num_classes=4, batch_size=4, warmup_iters=2, epochs=3)
    runs = {}
    for every in (0, 1):
        work = tmp_path / f"e{every}"
        m = train(cfg, TrainOptions(str(ann), str(imgs), str(work), str(vann), str(vimgs), progress=False,
                                    eval_every=every))
        log = [json.loads(ln) for ln in (work / "log.jsonl").read_text().splitlines()]
        runs[every] = (m, [r["loss"] for r in log if "loss" in r], [r for r in log if r.get("event") == "eval"])
    (m0, loss0, ev0), (m1, loss1, ev1) = runs[0], runs[1]
    assert loss0 == loss1 and m0["metrics"]["AP"] == m1["metrics"]["AP"]
    assert [e["epoch"] for e in m1["eval_history"]] == [1, 2, 3] and [e["epoch"] for e in m0["eval_history"]] == [3]
    assert m1["eval_history"][-1]["AP"] == m1["metrics"]["AP"] and [e["epoch"] for e in ev1] == [1, 2, 3]
    ck = torch.load(tmp_path / "e1" / "epoch_2.pth", weights_only=True)
    assert [e["epoch"] for e in ck["meta"]["eval_history"]] == [1, 2]
