"""The distribution explorer's state and widgets, on a model whose every anchor scores high."""
import math

import numpy as np
import pytest
import torch

from gflnb.engine.checkpoint import save_checkpoint
from gflnb.config import get_config
from gflnb.data.coco import CocoDetection
from gflnb.model.detector import GFL
from gflnb.chapters.explorer import Explorer, explore
from gflnb.data.synth import dataset_paths, make_dataset


def confident_model(**overrides) -> GFL:
    """An untrained demo model whose class logits start at +2 (sigmoid 0.88), so that it detects."""
    torch.manual_seed(0)
    m = GFL(get_config("gfl_cpu_demo", **overrides))
    with torch.no_grad():
        m.bbox_head.gfl_cls.bias.fill_(2.0)
    return m.eval()


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, num_train=0, num_val=3, seed=2, progress=False, version=2)
    ann, img = dataset_paths(root, "val")
    return CocoDetection(ann, img, get_config("gfl_cpu_demo"), train=False)


@pytest.fixture(scope="module")
def ex(ds):
    return explore(confident_model(), ds, score_thr=0.3)


def test_threshold_and_mode_change_what_can_be_selected(ex, ds):
    ex.mode, ex.score_thr = "predicted", 0.05
    low = ex.items()
    ex.score_thr = 0.95
    high = ex.items()
    assert len(low) > len(high)
    scores = [float(it["label"].split()[-1]) for it in low]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.05
    ex.mode = "gt"
    gts = ex.items()
    assert len(gts) == len(ds.records[ex.index].boxes)
    assert all(it["label"].startswith("gt ") for it in gts)
    # each gt through the detection chapter 5 matches to it: the highest-scoring one of its class
    # with IoU >= iou_match
    p = ex.prediction()
    for it in gts:
        ok = [j for j in range(len(p["scores"])) if float(p["iou"][it["gt"], j]) >= ex.iou_match]
        want = max(ok, key=lambda j: float(p["scores"][j])) if ok else None
        assert it["det"] == want
    assert ex.items() is gts  # cached while image, mode and threshold stay
    ex.mode, ex.score_thr = "predicted", 0.3


def test_click_selects_the_smallest_box_under_it(ex):
    items = ex.items()
    k = int(np.argmin([(b[2] - b[0]) * (b[3] - b[1]) for b in (it["box"] for it in items)]))
    b = items[k]["box"]
    x, y = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    containing = [j for j, it in enumerate(items) if it["box"][0] <= x <= it["box"][2] and it["box"][1] <= y <= it["box"][3]]
    assert ex.select_at(x, y) == min(containing, key=lambda j: (items[j]["box"][2] - items[j]["box"][0]) *
                                     (items[j]["box"][3] - items[j]["box"][1]))
    assert ex.select_at(-50.0, -50.0) is None  # outside every box: the selection stays


def test_detail_is_the_selected_detections_distributions(ex):
    ex.selected = 0
    d = ex.detail()
    p = ex.prediction()
    j = ex.items()[0]["det"]
    assert d["dist"].shape == (4, ex.model.cfg.reg_max + 1)
    np.testing.assert_allclose(d["dist"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(d["box"], p["boxes"][j].numpy())
    assert d["stride"] in ex.model.cfg.strides
    fig = ex.render()
    assert len(fig.axes) >= 4  # the overview, the crop and its two density strips


def test_widgets_react(ex):
    import ipywidgets  # noqa: F401 (the explorer's dependency)
    box = ex.widget()
    c = ex._controls
    before_list, before_img = list(c["list"].options), c["detail"].value
    c["threshold"].value = 0.9
    assert len(c["list"].options) < len(before_list)
    c["threshold"].value = 0.05
    c["list"].index = 1
    assert ex.selected == 1 and c["detail"].value != before_img
    status = c["status"].value
    c["next"].click()
    assert c["image_no"].value == 1 and c["status"].value != status
    c["mode"].value = "gt"
    assert all(o.split(": ", 1)[1].startswith("gt ") for o in c["list"].options)
    assert box.children


def test_refuses_what_it_cannot_show(ds):
    with pytest.raises(ValueError, match="no distributions"):
        Explorer(confident_model(box="dirac"), ds)
    with pytest.raises(IndexError, match="outside the dataset"):
        Explorer(confident_model(), ds, images=[0, 7])


def test_seek_finds_an_image_with_detections(ds):
    e = Explorer(confident_model(), ds, score_thr=0.3)
    assert e.seek(1) == 1 and e.items()
