"""The whole detector: state-dict keys of every preset, the R-18 forward against mmdetection,
checkpoint loading in mmdet's format, and torchvision backbone parity."""
import json
import os
import pickle

import pytest
import torch
import torchvision

import make_weights as mw
from conftest import FIXTURES, load_fixture
from gflnb import CheckpointError, build_model, load_checkpoint, save_checkpoint
from gflnb.config import PRESETS

KEYS = json.loads((FIXTURES / "keys.json").read_text())
SEED_PRESETS = ["gfl_r50_fpn_1x_coco", "gfl_r50_fpn_ms-2x_coco", "gfl_r101_fpn_ms-2x_coco",
                "gfl_r101-dconv-c3-c5_fpn_ms-2x_coco", "gfl_x101-32x4d_fpn_ms-2x_coco",
                "gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco"]


def meta_model(name, **kw):
    with torch.device("meta"):
        return build_model(name, **kw)


def shapes(sd):
    return [(k, list(v.shape)) for k, v in sd.items()]


@pytest.mark.parametrize("variant,preset,kw", [
    ("gfl_r18_fpn", "gfl_r18_fpn_1x_coco", {}),
    ("gfl_r50_fpn_1x_coco", "gfl_r50_fpn_1x_coco", {}),
    ("gfl_x101-32x4d_fpn", "gfl_x101-32x4d_fpn_ms-2x_coco", {}),
    ("gfl_r50-dconv-c3-c5_fpn", "gfl_r50_fpn_1x_coco", dict(stage_with_dcn=(False, True, True, True))),
])
def test_state_dict_keys_equal_reference(variant, preset, kw):
    sd = meta_model(preset, **kw).state_dict()
    ref = KEYS[variant]
    assert shapes(sd) == [(k, s) for k, s, *_ in ref["keys"]]
    assert [str(v.dtype).replace("torch.", "") for v in sd.values()] == [d.replace("torch.", "") for _, _, d, _ in ref["keys"]]
    assert len(sd) == ref["num_keys"] and sum(v.numel() for v in sd.values()) == ref["num_values"]


def test_r50_key_list_file_and_counts():
    lines = [ln.split() for ln in (FIXTURES / "gfl_r50_fpn_keys.txt").read_text().splitlines() if ln.strip()]
    ref_keys = [ln[0] for ln in lines if "." in ln[0]]
    sd = meta_model("gfl_r50_fpn_1x_coco").state_dict()
    assert list(sd) == ref_keys
    assert len(sd) == 368 and sum(v.numel() for v in sd.values()) == 32_493_727
    assert sum(k.startswith("backbone.") for k in sd) == 318
    assert sum(k.startswith("neck.") for k in sd) == 16 and sum(k.startswith("bbox_head.") for k in sd) == 34


@pytest.mark.parametrize("preset", SEED_PRESETS + ["gfl_r18_fpn_1x_coco", "gfl_cpu_demo"])
def test_every_preset_builds_with_torchvision_backbone_keys(preset):
    model = meta_model(preset)
    cfg = model.cfg
    sd = model.state_dict()
    bb = {k[len("backbone."):]: list(v.shape) for k, v in sd.items() if k.startswith("backbone.")}
    dcn = {k for k in bb if "conv_offset" in k}
    if cfg.base_channels == 64:
        block = torchvision.models.resnet.BasicBlock if cfg.depth < 50 else torchvision.models.resnet.Bottleneck
        layers = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[cfg.depth]
        with torch.device("meta"):
            tv = torchvision.models.resnet.ResNet(block, layers, groups=cfg.groups, width_per_group=cfg.base_width)
        ref = {k: list(v.shape) for k, v in tv.state_dict().items() if not k.startswith("fc.")}
        assert {k: v for k, v in bb.items() if k not in dcn} == ref
    n_dcn = {"gfl_r101-dconv-c3-c5_fpn_ms-2x_coco": 30, "gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco": 26}.get(preset, 0)
    assert len(dcn) == 2 * n_dcn
    for k in dcn:
        assert bb[k][0] == 18 and (len(bb[k]) == 1 or bb[k][2:] == [3, 3])
    assert sd["bbox_head.gfl_cls.weight"].shape[0] == cfg.num_classes
    assert sd["bbox_head.gfl_reg.weight"].shape[0] == 4 * (cfg.reg_max + 1)


def test_overrides_from_the_api_example():
    m = meta_model("gfl_r50_fpn_1x_coco", stage_with_dcn=(False, True, True, True), num_classes=3)
    sd = m.state_dict()
    assert sd["bbox_head.gfl_cls.weight"].shape[0] == 3
    assert shapes(sd) != shapes(meta_model("gfl_r50_fpn_1x_coco").state_dict())
    assert sum("conv_offset.weight" in k for k in sd) == 13
    assert set(PRESETS) >= set(SEED_PRESETS) | {"gfl_r18_fpn_1x_coco", "gfl_cpu_demo"}


# ----------------------------------------------------------------- R-18 forward vs mmdetection
@pytest.fixture(scope="module")
def r18():
    assert mw.make_state_dict is not None
    entry = KEYS["gfl_r18_fpn"]
    sd = mw.make_state_dict(entry["keys"])
    assert mw.state_dict_sha256(sd) == entry["state_dict_sha256"]
    model = build_model("gfl_r18_fpn_1x_coco", pretrained_backbone=False).eval()
    load_checkpoint(model, {"state_dict": sd, "meta": {}})
    return model


def _stats(maps):
    f = [m.double() for m in maps]
    return dict(sum=torch.stack([m.sum() for m in f]), mean=torch.stack([m.mean() for m in f]),
                abs_mean=torch.stack([m.abs().mean() for m in f]), std=torch.stack([m.std() for m in f]))


def match_as_sets(out, ref, box_atol=1e-3, score_atol=1e-5):
    """Detections as sets: every reference detection has one of the same label with IoU > 0.999."""
    from torchvision.ops import box_iou
    assert out["boxes"].shape == ref["bboxes"].shape
    iou = box_iou(ref["bboxes"], out["boxes"])
    iou[ref["labels"][:, None] != out["labels"][None, :]] = 0
    used = set()
    for i in range(iou.shape[0]):
        j = int(iou[i].argmax())
        assert iou[i, j] > 0.999 and j not in used, f"reference detection {i} has no match"
        used.add(j)
        assert abs(float(out["scores"][j] - ref["scores"][i])) <= score_atol
        assert (out["boxes"][j] - ref["bboxes"][i]).abs().max() <= box_atol


IO = load_fixture("gfl_r18_fpn_io.pt")
INPUTS = load_fixture("detector_inputs.pt")


@pytest.mark.parametrize("run", IO["runs"], ids=[r["name"] for r in IO["runs"]])
def test_r18_detector_forward_matches_reference(r18, run):
    x = INPUTS["inputs"][run["input_key"]]
    name, desc = run["name"], next(r for r in INPUTS["runs"] if r["name"] == run["name"])
    assert torch.equal(x, mw.make_detector_input("input/" + name, desc["content_hw"], desc["pad_hw"]))
    with torch.no_grad():
        c = r18.backbone(x)
        p = r18.neck(c)
        cls, reg = r18.bbox_head(p)
        preds = {rs: r18.predict(x, [run["img_meta"]], rescale=rs)[0] for rs in (True, False)}
    for got, ref in ((_stats(c), run["backbone_out_stats"]), (_stats(p), run["neck_out_stats"])):
        counts = torch.tensor([float(m.numel()) for m in (c if ref is run["backbone_out_stats"] else p)],
                              dtype=torch.float64)
        for k in ("mean", "abs_mean", "std"):
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got["sum"] / counts, ref["sum"] / counts, rtol=1e-4, atol=1e-5)
    for lvl, corner in enumerate(run["neck_out_corner"]):
        torch.testing.assert_close(p[lvl][0, :4, :2, :2], corner, rtol=1e-4, atol=1e-4)
    for a, b in zip(cls, run["cls_scores"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(reg, run["bbox_preds"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    match_as_sets(preds[True], run["predict_rescale_true"])
    match_as_sets(preds[False], run["predict_rescale_false"])
    # predictions from the stored head outputs are exact, in order
    from_stored = r18.bbox_head.predict(run["cls_scores"], run["bbox_preds"], [run["img_meta"]], rescale=True)[0]
    assert torch.equal(from_stored["labels"], run["predict_rescale_true"]["labels"])
    torch.testing.assert_close(from_stored["boxes"], run["predict_rescale_true"]["bboxes"], rtol=0, atol=1e-3)


# ----------------------------------------------------------------- checkpoints
def test_mmdet_checkpoint_with_and_without_project(tmp_path, r18):
    sd = {k: v.clone() for k, v in r18.state_dict().items()}
    for drop in (False, True):
        s = dict(sd)
        if drop:
            del s["bbox_head.integral.project"]
        else:
            s["bbox_head.integral.project"] = torch.zeros(17)  # its value is ignored
        path = tmp_path / f"zoo_{drop}.pth"
        torch.save({"state_dict": s, "meta": {"mmdet_version": "2.3.0", "CLASSES": ("a", "b")}}, path)
        m = build_model("gfl_r18_fpn_1x_coco")
        meta = load_checkpoint(m, str(path))
        assert meta["mmdet_version"] == "2.3.0"
        assert torch.equal(m.bbox_head.integral.project, torch.arange(17.0))
        assert torch.equal(m.backbone.conv1.weight, sd["backbone.conv1.weight"])


def test_checkpoint_mismatch_names_the_keys(r18):
    sd = dict(r18.state_dict())
    sd.pop("neck.fpn_convs.4.conv.weight")
    sd["bbox_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"neck\.fpn_convs\.4\.conv\.weight.*bbox_head\.extra\.weight"):
        load_checkpoint(build_model("gfl_r18_fpn_1x_coco"), {"state_dict": sd})
    with pytest.raises(CheckpointError, match="shape mismatch.*gfl_cls"):
        load_checkpoint(build_model("gfl_r18_fpn_1x_coco", num_classes=3), {"state_dict": dict(r18.state_dict())})


def test_own_checkpoint_roundtrip(tmp_path, r18):
    path = tmp_path / "ck.pth"
    save_checkpoint(r18, path, meta=dict(epoch=3, config=r18.cfg.to_dict()))
    m = build_model("gfl_r18_fpn_1x_coco")
    assert load_checkpoint(m, path)["epoch"] == 3
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), r18.state_dict().values()))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]  # no temporary file left behind


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/gflnb_pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(build_model("gfl_cpu_demo"), str(path))
    assert not os.path.exists("/tmp/gflnb_pwned")


# ----------------------------------------------------------------- backbone semantics
def test_backbone_equals_torchvision_resnet():
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    m = build_model("gfl_r18_fpn_1x_coco").eval()
    m.backbone.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = m.backbone(x)[-1]
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(t))))
    assert torch.equal(ours, ref)


def test_norm_eval_and_frozen_stages():
    m = build_model("gfl_r18_fpn_1x_coco").train()
    bns = [mod for mod in m.backbone.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    assert not m.backbone.conv1.weight.requires_grad and not m.backbone.bn1.weight.requires_grad
    assert not any(p.requires_grad for p in m.backbone.layer1.parameters())
    assert m.backbone.layer2[0].bn1.weight.requires_grad  # BN affine of stages 2-4 still trains
    before = m.backbone.layer2[0].bn1.running_mean.clone()
    m(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, m.backbone.layer2[0].bn1.running_mean)
    assert m.neck.training and m.bbox_head.training


def test_dcn_starts_as_plain_conv():
    from gflnb.model.backbone import DeformConv2dPack
    torch.manual_seed(0)
    d = DeformConv2dPack(8, 16, 3, stride=2, padding=1)
    x = torch.randn(1, 8, 13, 17)
    ref = torch.nn.functional.conv2d(x, d.weight, None, stride=2, padding=1)
    torch.testing.assert_close(d(x), ref, rtol=1e-5, atol=1e-5)
    assert list(dict(d.named_parameters())) == ["weight", "conv_offset.weight", "conv_offset.bias"]


def test_pretrained_weights_unavailable_is_one_clear_error(tmp_path):
    from gflnb.model.backbone import PretrainedWeightsError
    m = build_model("gfl_r18_fpn_1x_coco", pretrained_backbone=str(tmp_path / "missing.pth"))
    with pytest.raises(PretrainedWeightsError, match="cannot load ImageNet weights.*missing.pth") as e:
        m.init_weights()
    assert "\n" not in str(e.value)
    # a local torchvision-format file works, fc keys and all
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    m = build_model("gfl_r18_fpn_1x_coco", pretrained_backbone=str(tmp_path / "r18.pth"))
    m.init_weights()
    assert torch.equal(m.backbone.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    assert not m.backbone.layer1[0].conv1.weight.requires_grad


def test_channels_last_trains_and_infers_in_nhwc_and_matches(r18):
    m = build_model("gfl_r18_fpn_1x_coco", channels_last=True)
    load_checkpoint(m, {"state_dict": r18.state_dict()})
    m.eval()
    assert m.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = INPUTS["inputs"]["320x320"]
    with torch.no_grad():
        a, _ = m(x)
        b, _ = r18(x)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)
    m.train()
    assert m.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_nhwc_training_step_equals_nchw():
    torch.manual_seed(0)
    cfg = dict(num_classes=3, pretrained_backbone=False)
    nchw = build_model("gfl_cpu_demo", channels_last=False, **cfg).train()
    nhwc = build_model("gfl_cpu_demo", channels_last=True, **cfg).train()
    nhwc.load_state_dict(nchw.state_dict())
    x = torch.randn(2, 3, 128, 160)
    tg = [dict(boxes=torch.tensor([[10., 12., 60., 70.]]), labels=torch.tensor([1]))] * 2
    metas = [dict(img_shape=(128, 160), pad_shape=(128, 160), scale_factor=(1.0, 1.0))] * 2
    la, lb = nchw.loss(x, tg, metas), nhwc.loss(x, tg, metas)
    sum(la.values()).backward()
    sum(lb.values()).backward()
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-5)
    for (n, p), q in zip(nchw.named_parameters(), nhwc.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=n)


def test_nhwc_is_refused_where_torch_would_crash():
    with pytest.raises(ValueError, match="1x1 stride-2 conv with 8 input channels"):
        build_model("gfl_cpu_demo", base_channels=8, in_channels=(8, 16, 32, 64), channels_last=True)


def _matches_reference_run(model):
    """The reference's R-18 outputs and predictions (H250xW370 padded to 256x384) to fp32 rounding."""
    x = INPUTS["inputs"]["H250xW370_pad256x384"]
    run = IO["runs"][1]
    with torch.no_grad():
        cls, reg = model(x)
        preds = model.predict(x, [run["img_meta"]])[0]
    for a, b in zip(cls, run["cls_scores"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(reg, run["bbox_preds"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    match_as_sets(preds, run["predict_rescale_true"])


def test_inference_path_matches_the_reference(r18):
    from gflnb.model.fuse import inference_model
    fast = inference_model(r18, "cpu")
    assert fast._nhwc and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.backbone.modules())
    assert not r18._nhwc and r18.backbone.conv1.weight.is_contiguous()  # the original is untouched
    assert inference_model(fast, "cpu") is fast  # idempotent: callers in a loop make no second copy
    _matches_reference_run(fast)


def test_bn_folding_matches_and_leaves_the_original(r18):
    from gflnb.model.fuse import fuse_for_inference
    fused = fuse_for_inference(r18)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.backbone.modules())
    assert "backbone.bn1.weight" in r18.state_dict()  # the original keeps mmdet's keys
    _matches_reference_run(fused)
    dcn = build_model("gfl_r50_fpn_1x_coco", stage_with_dcn=(False, True, True, True)).eval()
    fd = fuse_for_inference(dcn)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fd(x)[0][0], dcn(x)[0][0], rtol=1e-4, atol=1e-4)


def test_plain_predict_matches_the_reference(r18):
    """``fast=False`` is the model as built; the eval-mode default goes through the inference path
    (test_inference_path_matches_the_reference): both give the reference's detections."""
    x = INPUTS["inputs"]["H250xW370_pad256x384"]
    run = IO["runs"][1]
    with torch.no_grad():
        match_as_sets(r18.predict(x, [run["img_meta"]], fast=False)[0], run["predict_rescale_true"])


def _demo_batch():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 160)
    metas = [dict(img_shape=(128, 160), pad_shape=(128, 160), scale_factor=(1.0, 1.0))] * 2
    targets = [dict(boxes=torch.tensor([[10., 20., 90., 100.]]), labels=torch.tensor([1]))] * 2
    return x, metas, targets


def _assert_same_dets(a, b):
    for da, db in zip(a, b):
        assert da["labels"].tolist() == db["labels"].tolist()
        torch.testing.assert_close(da["boxes"], db["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(da["scores"], db["scores"], rtol=0, atol=1e-5)


def test_eval_predict_runs_the_inference_path_and_rebuilds_it_when_weights_change():
    model = build_model("gfl_cpu_demo", num_classes=3, pretrained_backbone=False, score_thr=0.0)
    with torch.no_grad():
        model.bbox_head.gfl_cls.bias.fill_(-1.0)  # scores above the threshold for the comparisons below
    keys, modules = list(model.state_dict()), [n for n, _ in model.named_modules()]
    x, metas, targets = _demo_batch()
    model.eval()
    net = model.inference_net()
    assert net is not model and net._nhwc and not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())  # no graph without torch.no_grad()
    assert model.inference_net() is net  # built once
    dets = model.predict(x, metas)
    assert model.inference_net() is net and len(dets[0]["scores"]) > 0
    _assert_same_dets(dets, model.predict(x, metas, fast=False))
    assert list(model.state_dict()) == keys and [n for n, _ in model.named_modules()] == modules

    # load_state_dict: new weights, new copy, its predictions those of the new weights
    torch.manual_seed(1)
    other = build_model("gfl_cpu_demo", num_classes=3, pretrained_backbone=False, score_thr=0.0)
    with torch.no_grad():
        other.bbox_head.gfl_cls.bias.fill_(-1.0)
    model.load_state_dict(other.state_dict())
    net2 = model.inference_net()
    assert net2 is not net
    _assert_same_dets(model.predict(x, metas), other.eval().predict(x, metas, fast=False))

    # a training step, then eval(): rebuilt, and equal to the plain path of the stepped weights
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sum(model.loss(x, targets, metas).values()).backward()
    opt.step()
    model.eval()
    net3 = model.inference_net()
    assert net3 is not net2
    _assert_same_dets(model.predict(x, metas), model.predict(x, metas, fast=False))

    # train() then eval() without a step also starts anew; an in-place edit of one weight too
    model.train().eval()
    assert model.inference_net() is not net3
    net4 = model.inference_net()
    with torch.no_grad():
        model.bbox_head.gfl_cls.bias.add_(0.5)
    assert model.inference_net() is not net4
    _assert_same_dets(model.predict(x, metas), model.predict(x, metas, fast=False))

    import copy
    clone = copy.deepcopy(model.eval())  # the cache is not part of the model
    assert clone.inference_net() is not model.inference_net()


def test_flop_count_sees_the_inference_paths_onednn_convolutions():
    # the benchmark's floors divide by these FLOPs: the oneDNN op of the inference path must count as
    # the convolution it is
    from gflnb.engine.benchmark import flops
    model = build_model("gfl_cpu_demo").eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        plain, fast = flops(lambda: model(x)), flops(lambda: model.inference_net(x.device)(x))
    assert plain > 0 and fast == plain
