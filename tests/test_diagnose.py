"""gflnb.engine.diagnose: a traced run trains the same model as gflnb train (losses equal bit for bit), and
its records add up (the DGQP's logit gradient split by positives and negatives sums to its bias
gradient; with GFocalV2's detached weights the box losses send it nothing)."""
import json
import math

import pytest

from gflnb.config import get_config
from gflnb.engine.diagnose import GROUPS, group_of, trace
from gflnb.data.synth import dataset_paths, make_dataset
from gflnb.engine.train import TrainOptions, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, num_train=8, num_val=2, seed=1, progress=False)
    return root


def _opts(tiny, work) -> TrainOptions:
    ann, imgs = dataset_paths(tiny, "train")
    return TrainOptions(str(ann), str(imgs), str(work), max_iters=3, progress=False, keep_epoch_checkpoints=False)


@pytest.mark.parametrize("overrides", [dict(quality="dgqp"), dict(quality="dgqp", dgqp_weight_grad=True), {}],
                         ids=["dgqp", "dgqp_weight_grad", "gfl"])
def test_traced_run_trains_the_same_model(tiny, tmp_path, overrides):
    cfg = get_config("gfl_cpu_demo", warmup_iters=2, batch_size=4, **overrides)
    train(cfg, _opts(tiny, tmp_path / "plain"))
    plain = [json.loads(ln) for ln in (tmp_path / "plain" / "log.jsonl").read_text().splitlines()]
    records, metrics = trace(cfg, _opts(tiny, tmp_path / "traced"))
    assert metrics["iterations"] == 3 and [r["iter"] for r in records] == [1, 2, 3]
    for p, r in zip(plain, records):
        assert {k: p[k] for k in ("loss_cls", "loss_bbox", "loss_dfl", "lr")} == \
            {k: r[k] for k in ("loss_cls", "loss_bbox", "loss_dfl", "lr")}
    r = records[0]
    assert r["num_pos"] > 0 and -10 < r["cls_pos_mean"] < 0 and 0 <= r["iou_mean"] <= 1
    assert 0 < r["top1_pos"] <= 1 and r["cls_all_min"] <= r["cls_all_mean"] <= r["cls_all_max"]
    assert set(f"grad_{g}" for g in GROUPS if g != "dgqp") <= set(r) and ("grad_dgqp" in r) == (cfg.quality == "dgqp")
    if cfg.quality != "dgqp":
        assert "z_min" not in r and "dbias_cls" not in r
        return
    assert 0 < r["q_pos_mean"] < 1 and r["z_min"] <= r["z_pos_mean"] <= r["z_max"]
    assert r["dz_pos"] + r["dz_neg"] == pytest.approx(r["dbias_cls"], rel=1e-4)
    if cfg.dgqp_weight_grad:
        assert r["dbias_box"] > 100 * abs(r["dbias_cls"])  # the box losses push the quality down
        assert r["grad_dgqp"] > r["qgrad_cls"]
    else:
        assert "dbias_box" not in r  # no gradient from the box losses at all
        assert math.isclose(r["grad_dgqp"], r["qgrad_cls"], rel_tol=1e-6)


def test_groups():
    assert group_of("bbox_head.quality.reg_conf.0.weight") == "dgqp"
    assert group_of("bbox_head.reg_convs.0.conv.weight") == "reg_tower"
    assert group_of("bbox_head.gfl_cls.bias") == "cls_tower" and group_of("neck.fpn_convs.0.conv.weight") == \
        "backbone_neck"
    assert group_of("bbox_head.integral.project") is None
