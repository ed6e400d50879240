"""gflnb.Detector and `gflnb predict` on a briefly trained demo checkpoint: the same boxes as
GFL.predict, the same AP as `gflnb evaluate`, ONNX as torch, videos, bad files, and the uncertainty."""
import json
import math
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from gflnb.cli import main
from gflnb.data.coco import CocoDetection, Collate
from gflnb.data.preprocess import load_image
from gflnb.data.synth import dataset_paths, make_dataset
from gflnb.engine.checkpoint import model_from_checkpoint
from gflnb.engine.evaluate import coco_eval


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny synthetic set and gfl_cpu_demo trained on it for 12 iterations (about 5 s on an idle machine)."""
    root = tmp_path_factory.mktemp("predict_synth")
    make_dataset(root, num_train=16, num_val=6, seed=3, progress=False)
    ann, imgs = dataset_paths(root, "train")
    work = root / "run"
    assert main(["train", "--config", "gfl_cpu_demo", "--train-ann", str(ann), "--train-images", str(imgs),
                 "--work-dir", str(work), "--no-progress", "--no-tensorboard", "--set", "warmup_iters=3",
                 "--set", "batch_size=4", "--max-iters", "12"]) == 0
    return root, work / "latest.pth"


@pytest.fixture(scope="session")
def detector(trained):
    import gflnb
    return gflnb.Detector("gfl_cpu_demo", trained[1])


def _val(trained):
    ann, imgs = dataset_paths(trained[0], "val")
    return ann, imgs, sorted(imgs.iterdir())


def test_detect_returns_what_gfl_predict_returns(trained, detector):
    from PIL import Image
    ann, imgs, files = _val(trained)
    model, _ = model_from_checkpoint(trained[1])
    ds = CocoDetection(ann, imgs, model.cfg, train=False)
    inputs = [str(files[0]), load_image(str(files[1])), Image.open(files[2])]  # a path, numpy BGR, PIL
    dets = [detector.detect(x) for x in inputs]  # one at a time: GFL.predict's batch of one, to the bit
    assert sum(len(d) for d in dets) > 0
    batched = detector.detect(inputs)  # batched where padded sizes agree: the same to fp32 rounding
    for a, b in zip(dets, batched):
        assert np.array_equal(a.labels, b.labels) and np.abs(a.boxes - b.boxes).max(initial=0) <= 1e-3
        assert np.abs(a.scores - b.scores).max(initial=0) <= 1e-5
    for i, d in enumerate(dets):
        k = next(j for j, r in enumerate(ds.records) if r.path == str(files[i]))
        images, _, metas = Collate(ds.cfg)([ds[k]])
        want = model.predict(images, metas)[0]
        assert d.boxes.shape == tuple(want["boxes"].shape) and d.image_size == (ds.records[k].height, ds.records[k].width)
        np.testing.assert_array_equal(d.boxes, want["boxes"].numpy())
        np.testing.assert_array_equal(d.scores, want["scores"].numpy())
        np.testing.assert_array_equal(d.labels, want["labels"].numpy())
        assert d.names == [ds.class_names[int(k)] for k in want["labels"]]
    one = detector.detect(str(files[0]), score_thr=0.2)  # one input: one result, the threshold applied
    assert (one.scores > 0.2).all() and len(one) == int((dets[0].scores > 0.2).sum())


def test_uncertainty_equals_a_hand_computation(detector, trained):
    files = _val(trained)[2]
    d = detector.detect(str(files[0]), with_dists=True)
    assert len(d) and d.dists.shape == (len(d), 4, detector.cfg.reg_max + 1)
    sw, sh = d.scale_factor
    for k in range(min(len(d), 5)):
        for side in range(4):
            p = d.dists[k, side].astype(np.float64)
            mean = sum(j * p[j] for j in range(len(p)))
            std_bins = math.sqrt(sum((j - mean) ** 2 * p[j] for j in range(len(p))))
            scale = sw if side % 2 == 0 else sh
            assert d.std_px[k, side] == pytest.approx(std_bins * float(d.strides[k]) / float(scale), rel=1e-9)
            assert d.entropy[k, side] == pytest.approx(-sum(q * math.log(q) for q in p if q > 0), abs=1e-9)
        assert 0 <= d.entropy[k].min() and d.entropy[k].max() <= math.log(detector.cfg.reg_max + 1) + 1e-9
    r = d.to_coco(7, detector.label2cat)[0]
    assert r["uncertainty"]["sides"] == ["left", "top", "right", "bottom"]
    assert r["uncertainty"]["std_px"] == [round(float(v), 3) for v in d.std_px[0]]


def _predict(*args):
    return subprocess.run([sys.executable, "-m", "gflnb", "predict", "--no-progress", *map(str, args)],
                          capture_output=True, text=True)


def test_predict_json_gives_the_ap_of_evaluate(trained, tmp_path, capsys):
    ann, imgs, _ = _val(trained)
    out = tmp_path / "pred"
    ds = CocoDetection(ann, imgs, model_from_checkpoint(trained[1])[0].cfg)
    strip = lambda rs: sorted((r["image_id"], r["category_id"], r["score"], *r["bbox"]) for r in rs)  # noqa: E731
    ap = {}
    for batch in ("1", "8"):
        out, ev = tmp_path / f"pred{batch}", tmp_path / f"eval{batch}.json"
        assert main(["predict", "--checkpoint", str(trained[1]), str(imgs), "--out", str(out), "--ann", str(ann),
                     "--no-progress", "--batch-size", batch]) == 0
        assert "gflnb predict: 6 images" in capsys.readouterr().out
        mine = json.loads((out / "results.json").read_text())
        assert mine and all("file_name" in r and len(r["uncertainty"]["entropy"]) == 4 for r in mine)
        assert main(["evaluate", "--config", "gfl_cpu_demo", "--checkpoint", str(trained[1]), "--ann", str(ann),
                     "--images", str(imgs), "--out", str(ev), "--no-progress", "--batch-size", batch]) == 0
        theirs = json.loads(ev.read_text())
        ap[batch] = coco_eval(ds, mine).metrics, coco_eval(ds, theirs).metrics
        if batch == "1":  # both one image at a time: the same detections to the last digit written
            assert strip(mine) == strip(theirs)
            assert ap[batch][0] == ap[batch][1]
    # batched, evaluate pads every image to the batch's largest (the head's GroupNorm sees the padding),
    # predict only batches equal padded sizes: close, not equal (printed for the record)
    print("AP predict vs evaluate:", json.dumps(ap))
    assert (out / f"{sorted(imgs.iterdir())[0].stem}.jpg").exists()


def test_onnx_path_matches_torch(trained, detector, tmp_path):
    onnx_file = tmp_path / "demo.onnx"
    assert main(["export", "--config", "gfl_cpu_demo", "--checkpoint", str(trained[1]), "--out", str(onnx_file)]) == 0
    import gflnb
    ort = gflnb.Detector(onnx=onnx_file)
    files = [str(p) for p in _val(trained)[2]]
    for a, b in zip(detector.detect(files, with_dists=True), ort.detect(files, with_dists=True)):
        # as tests/test_export.py requires of the export: same detections, boxes within 1e-3 px, scores 1e-5
        assert len(a) == len(b) and np.array_equal(a.labels, b.labels) and a.names == b.names
        if len(a):
            assert np.abs(a.boxes - b.boxes).max() <= 1e-3 and np.abs(a.scores - b.scores).max() <= 1e-5
            np.testing.assert_allclose(a.dists, b.dists, atol=1e-5)
            np.testing.assert_allclose(a.std_px, b.std_px, atol=1e-3)
    r = _predict("--onnx", onnx_file, files[0], "--out", tmp_path / "o")
    assert r.returncode == 0 and "onnxruntime" in r.stdout, r.stderr


def test_a_three_frame_video(trained, detector, tmp_path):
    files = _val(trained)[2]
    frames = [cv2.resize(load_image(str(f)), (256, 192)) for f in files[:3]]
    video = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (256, 192))
    for f in frames:
        w.write(f)
    w.release()
    out = tmp_path / "v"
    r = _predict("--checkpoint", trained[1], video, "--out", out)
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "images.json").read_text())
    assert [im["file_name"] for im in info["images"]] == [f"{video}#{k}" for k in range(3)]
    drawn = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    # frames in order: each frame's detections are the decoded frame's own
    cap = cv2.VideoCapture(str(video))
    dets = json.loads((out / "results.json").read_text())
    for k in range(3):
        ok, frame = cap.read()
        assert ok
        want = detector.detect(frame)
        assert len([d for d in dets if d["file_name"] == f"{video}#{k}"]) == len(want)


def test_a_folder_with_a_corrupt_file_and_a_text_file(trained, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    files = _val(trained)[2]
    for f in files[:4]:
        shutil.copy(f, folder / f.name)
    (folder / "broken.jpg").write_bytes(files[0].read_bytes()[:40])  # a torn JPEG
    (folder / "notes.txt").write_text("not a picture")
    r = _predict("--checkpoint", trained[1], folder, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    skipped = [ln for ln in r.stderr.splitlines() if ln.startswith("gflnb: skipped")]
    assert len(skipped) == 2 and any("broken.jpg" in s for s in skipped) and any("notes.txt" in s for s in skipped)
    assert "gflnb predict: 4 images" in r.stdout and "2 skipped" in r.stdout
    assert "Traceback" not in r.stderr


def test_bad_checkpoint_or_output_fail_before_any_work(trained, tmp_path):
    files = _val(trained)[2]
    bad = {
        "checkpoint of another preset": (["--config", "gfl_r18_fpn_1x_coco", "--checkpoint", trained[1]],
                                         "trained from preset 'gfl_cpu_demo'"),
        "output under a file": (["--checkpoint", trained[1], "--out", files[0] / "x"], "cannot write"),
    }
    for what, (args, says) in bad.items():
        out = ["--out", tmp_path / "o2"] if "--out" not in args else []
        r = _predict(*args, *out, files[0])
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("gflnb: error:")]
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], (what, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "o2" / "results.json").exists()


def test_explore_a_folder_without_annotations(trained, detector):
    import gflnb
    imgs = _val(trained)[1]
    model, _ = model_from_checkpoint(trained[1])
    ex = gflnb.explore(model, str(imgs), score_thr=0.05)
    assert gflnb.explore(detector, str(imgs)).ds.class_names == detector.class_names
    assert len(ex.images) == 6 and not ex.has_gt
    ex.seek(0)
    d = ex.detail()
    assert d is not None and d["gt"] is None and d["dist"].shape == (4, model.cfg.reg_max + 1)
    assert len(ex.render().axes) >= 4
