"""ONNX export (gflnb.engine.export, `gflnb export`): onnxruntime's detections against GFL.predict."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from gflnb import build_model, save_checkpoint
from gflnb.engine.export import OnnxDetector, export_onnx


def _meta(h, w):
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    return [dict(img_shape=(h, w), pad_shape=(ph, pw), scale_factor=(1.0, 1.0))], (ph, pw)


def _same_detections(a, b, box_atol=1e-3, score_atol=1e-5):
    """The same detections in the same order: labels equal, boxes within ``box_atol`` px, scores within ``score_atol``."""
    assert len(a["scores"]) == len(b["scores"]) > 0
    assert np.array_equal(a["labels"].numpy(), np.asarray(b["labels"]))
    assert np.abs(a["boxes"].numpy() - np.asarray(b["boxes"])).max() <= box_atol
    assert np.abs(a["scores"].numpy() - np.asarray(b["scores"])).max() <= score_atol


def _scored(model):
    with torch.no_grad():  # random weights: lift the class prior so that anchors pass score_thr
        model.bbox_head.gfl_cls.bias.fill_(-1.0)
    return model.eval()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.manual_seed(0)
    model = _scored(build_model("gfl_cpu_demo", num_classes=3, pretrained_backbone=False))
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "demo.onnx")
    return model, path


def test_demo_export_matches_predict_at_two_input_sizes(demo):
    model, path = demo
    det = OnnxDetector(path)
    for h, w in [(128, 160), (250, 190)]:  # one graph, two sizes: the input size is dynamic
        metas, (ph, pw) = _meta(h, w)
        x = torch.randn(1, 3, ph, pw, generator=torch.Generator().manual_seed(h))
        _same_detections(model.predict(x, metas)[0], det.predict(x, metas)[0])


@pytest.mark.slow
def test_r50_export_matches_predict_at_512_and_800x1333(tmp_path):
    torch.manual_seed(0)
    model = _scored(build_model("gfl_r50_fpn_1x_coco", pretrained_backbone=False))
    det = OnnxDetector(export_onnx(model, tmp_path / "r50.onnx"))
    for h, w in [(512, 512), (800, 1333)]:
        metas, (ph, pw) = _meta(h, w)
        x = torch.randn(1, 3, ph, pw, generator=torch.Generator().manual_seed(w))
        _same_detections(model.predict(x, metas)[0], det.predict(x, metas)[0])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gflnb", "export", *args], capture_output=True, text=True)


def test_cli_exports_a_checkpoint_and_refuses_bad_input_in_one_line(tmp_path):
    torch.manual_seed(0)
    model = _scored(build_model("gfl_cpu_demo", num_classes=3, pretrained_backbone=False))
    ck = tmp_path / "demo.pth"
    save_checkpoint(model, ck)
    out = tmp_path / "m.onnx"
    r = _cli("--config", "gfl_cpu_demo", "--checkpoint", str(ck), "--out", str(out), "--set", "num_classes=3")
    assert r.returncode == 0, r.stderr
    metas, (ph, pw) = _meta(128, 128)
    x = torch.randn(1, 3, ph, pw)
    _same_detections(model.predict(x, metas)[0], OnnxDetector(out).predict(x, metas)[0])

    bad = {
        "unknown preset": (["--config", "gfl_nope", "--random-weights", "--out", str(tmp_path / "a.onnx")], "gfl_nope"),
        "checkpoint of another preset": (["--config", "gfl_r18_fpn_1x_coco", "--checkpoint", str(ck),
                                          "--out", str(tmp_path / "b.onnx")], "does not fit the model"),
        "output that cannot be written": (["--config", "gfl_cpu_demo", "--checkpoint", str(ck), "--set", "num_classes=3",
                                           "--out", str(tmp_path / "no" / "such" / "c.onnx")], "does not exist"),
        "neither checkpoint nor random weights": (["--config", "gfl_cpu_demo", "--out", str(tmp_path / "d.onnx")],
                                                  "--random-weights"),
    }
    for what, (args, says) in bad.items():
        r = _cli(*args)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("gflnb: error:")]
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], (what, r.stderr)
        assert "Traceback" not in r.stderr, what
