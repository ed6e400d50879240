"""GFLHead end to end against mmdetection: forward, targets, losses, gradients, predictions."""
import pytest
import torch

from conftest import assert_close, load_fixture
from gflnb.config import HeadConfig
from gflnb.model.head import GFLHead

HEAD = load_fixture("gfl_head.pt")["cases"]
SCEN = [(ci, si) for ci, c in enumerate(HEAD) for si in range(len(c["scenarios"]))]


def make_head(c):
    h = GFLHead(c["num_classes"], c["in_channels"], c["feat_channels"], c["stacked_convs"], c["reg_max"],
                c["strides"], config=HeadConfig(norm_num_groups=c["gn_num_groups"]))
    h.load_state_dict({k[len("bbox_head."):]: v for k, v in c["state_dict"].items()})
    return h.eval()


@pytest.mark.parametrize("ci", range(len(HEAD)))
def test_head_forward(ci):
    c = HEAD[ci]
    h = make_head(c)
    assert list(h.state_dict()) == [k[len("bbox_head."):] for k in c["state_dict"]]
    with torch.no_grad():
        cls, reg = h(c["feats"])
    for a, b in zip(cls, c["cls_scores"]):
        assert_close(a, b)
    for a, b in zip(reg, c["bbox_preds"]):
        assert_close(a, b)


@pytest.mark.parametrize("ci,si", SCEN)
def test_head_targets(ci, si):
    c, s = HEAD[ci], HEAD[ci]["scenarios"][si]
    h = make_head(c)
    targets = [dict(boxes=b, labels=l) for b, l in zip(s["gt_bboxes"], s["gt_labels"])]
    t = h.get_targets(c["featmap_sizes"], targets, c["img_metas"])
    ref = s["targets"]
    for name in ("labels", "label_weights", "bbox_targets"):
        for a, b in zip(t.per_level(name), ref[name]):
            assert torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(t.valid_flags, ref["valid_flags"]))
    assert t.num_pos_avg_factor == ref["num_pos_avg_factor"]


@pytest.mark.parametrize("ci,si", SCEN)
def test_head_losses_and_gradients(ci, si):
    c, s = HEAD[ci], HEAD[ci]["scenarios"][si]
    h = make_head(c)
    cls = [x.clone().requires_grad_() for x in c["cls_scores"]]
    reg = [x.clone().requires_grad_() for x in c["bbox_preds"]]
    targets = [dict(boxes=b, labels=l) for b, l in zip(s["gt_bboxes"], s["gt_labels"])]
    losses = h.loss(cls, reg, targets, c["img_metas"])
    for k in ("loss_cls", "loss_bbox", "loss_dfl"):
        assert_close(losses[k].detach(), torch.stack(s[k]).sum())
        assert_close(losses[k].detach(), torch.tensor(s[f"{k}_sum"]))
    total = sum(losses.values())
    assert_close(total.detach(), torch.tensor(s["total_loss"]))
    total.backward()
    for a, b in zip(cls, s["grad_cls_scores"]):
        assert_close(a.grad, b)
    for a, b in zip(reg, s["grad_bbox_preds"]):
        assert_close(a.grad, b)


PREDICT = [("rescale_false", dict(rescale=False)), ("rescale_true", dict(rescale=True)),
           ("pre_nms_rescale_false", dict(with_nms=False)),
           ("thr0.45_max3000_rescale_false", dict(score_thr=0.45, max_per_img=3000))]


@pytest.mark.parametrize("ci", range(len(HEAD)))
@pytest.mark.parametrize("key,kw", PREDICT, ids=[p[0] for p in PREDICT])
def test_head_predict_from_stored_outputs(ci, key, kw):
    c = HEAD[ci]
    out = make_head(c).predict(c["cls_scores"], c["bbox_preds"], c["img_metas"], **kw)
    for o, r in zip(out, c["predict"][key]):
        assert o["boxes"].shape == r["bboxes"].shape and o["boxes"].shape[1] == 4
        assert torch.equal(o["labels"], r["labels"]) and o["labels"].dtype == torch.int64
        torch.testing.assert_close(o["scores"], r["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(o["boxes"], r["bboxes"], rtol=0, atol=1e-3)
        if kw.get("with_nms", True):
            assert torch.all(o["scores"][:-1] >= o["scores"][1:])


def test_empty_batch_losses_are_exactly_zero_but_cls_positive():
    # mmdet's unit test: 256x256 image, 4 classes, in_channels 1, random features
    torch.manual_seed(0)
    h = GFLHead(4, in_channels=1, feat_channels=32, stacked_convs=2, config=HeadConfig(norm_num_groups=8))
    feats = [torch.rand(1, 1, 256 // s, 256 // s) for s in h.strides]
    meta = [dict(img_shape=(256, 256), pad_shape=(256, 256), scale_factor=(1.0, 1.0))]
    cls, reg = h(feats)
    empty = h.loss(cls, reg, [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))], meta)
    assert empty["loss_cls"].item() > 0
    assert empty["loss_bbox"].item() == 0 and empty["loss_dfl"].item() == 0
    assert empty["loss_bbox"].requires_grad
    one = h.loss(cls, reg, [dict(boxes=torch.tensor([[23.6667, 23.8757, 238.6326, 151.8874]]),
                                 labels=torch.tensor([2]))], meta)
    assert all(v.item() > 0 for v in one.values())


def test_head_init_follows_reference():
    h = GFLHead(80)
    assert torch.allclose(h.gfl_cls.bias, torch.full((80,), -4.59511985))
    assert abs(h.gfl_reg.weight.std().item() - 0.01) < 1e-3
    assert all(s.scale.item() == 1.0 and s.scale.dim() == 0 for s in h.scales)
    assert h.cls_convs[0].conv.bias is None and h.cls_convs[0].gn.num_groups == 32


def test_loss_rejects_mismatched_targets(head_fixture):
    c = HEAD[0]
    h = make_head(c)
    with pytest.raises(ValueError, match="targets"):
        h.loss(c["cls_scores"], c["bbox_preds"], [], c["img_metas"])
    with pytest.raises(KeyError, match="pad_shape"):
        h.loss(c["cls_scores"], c["bbox_preds"], [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0))] * 2,
               [{}, {}])
