"""The paper's ablated variants (Table 1a quality with its implicit-weighting rows, 1c beta, 2a box
with the Gaussian, 2b reg_max, 2c bin interval, Table 3, GFLv2's DGQP): each component on cases small
enough to compute by hand, then each variant trained for a few AdamW steps on a fixed tiny batch and
run through ``GFL.predict``."""
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from gflnb import build_model
from gflnb.model.box_repr import DFLCoder, DiracCoder, GaussianCoder, IntegralCoder, build_box_coder
from gflnb.boxes import distance2bbox
from gflnb.config import BOXES, QUALITIES, ConfigError, HeadConfig, get_config, parse_set
from gflnb.model.head import GFLHead
from gflnb.losses import (AVG_EPS, kl_box_loss, quality_focal_loss, quality_focal_loss_autograd,
                          quality_focal_loss_log, quality_focal_loss_prob, sigmoid_focal_loss)
from gflnb.data.preprocess import preprocess
from gflnb.model.quality import (CenternessGuidedQuality, CenternessQuality, DGQPQuality, FocalQuality,
                           IoUGuidedQuality, IoUQuality, Positives, QFLQuality, build_quality, centerness_target,
                           dgqp_features)
from gflnb.data.synth import render_image

D = torch.float64
LN2 = math.log(2.0)


def close(a, b, tol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=tol, atol=tol)


# ----------------------------------------------------------------- focal loss ('none', 'centerness', 'iou')
def test_focal_loss_by_hand():
    # positive of class 0 with logits (0, ln 3): class 0 has p=.5, t=1 -> alpha .25 * (1-p)^2 * ln 2;
    # class 1 has p=.75, t=0 -> (1-alpha) .75 * p^2 * -ln(1-p) = .75 * .5625 * ln 4.
    # A negative (label C=2) with logits (0, 0): 2 * .75 * .25 * ln 2.
    x = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=D)
    out = sigmoid_focal_loss(x, torch.tensor([0, 2]))
    close(out, [0.25 * 0.25 * LN2 + 0.75 * 0.5625 * math.log(4.0), 2 * 0.75 * 0.25 * LN2])
    assert out.dtype == D


def test_focal_loss_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=g, dtype=D)
    labels = torch.randint(0, 8, (50,), generator=g)  # 7 = negative
    onehot = torch.zeros_like(x)
    onehot[labels < 7, labels[labels < 7]] = 1
    ref = torchvision.ops.sigmoid_focal_loss(x, onehot, alpha=0.25, gamma=2.0, reduction="none").sum(1)
    close(sigmoid_focal_loss(x, labels), ref)


# ----------------------------------------------------------------- centerness and the separate branches
def test_centerness_target_by_hand():
    pts = torch.tensor([[5.0, 5.0], [2.0, 5.0], [5.0, 10.0]], dtype=D)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]], dtype=D)
    # (l, r) = (5, 5), (t, b) = (5, 15) -> sqrt(1 * 1/3); (2, 8), (5, 5) -> sqrt(1/4); the centre -> 1
    close(centerness_target(pts, boxes), [math.sqrt(1 / 3), 0.5, 1.0])


def positives(extra, iou, points=None, gt=None, num_classes=2):
    p = len(iou)
    return Positives(index=torch.arange(p), cls=torch.zeros(p, num_classes, dtype=D),
                     reg=torch.zeros(p, 4, dtype=D), extra=torch.tensor(extra, dtype=D)[:, None],
                     points=points if points is not None else torch.tensor([[5.0, 5.0]] * p, dtype=D),
                     gt_boxes=gt if gt is not None else torch.tensor([[0.0, 0.0, 10.0, 10.0]] * p, dtype=D),
                     iou=torch.tensor(iou, dtype=D))


def test_separate_branch_bce_by_hand():
    # two positives, quality logits 0 and ln 3 (sigmoid .75); ATSS averages the BCE over positives
    points = torch.tensor([[5.0, 5.0], [2.0, 5.0]], dtype=D)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2, dtype=D)  # centerness targets 1 and 0.5
    pos = positives([0.0, math.log(3.0)], [0.75, 0.25], points, gt)
    cls = torch.zeros(2, 2, dtype=D)
    labels, lw = torch.tensor([0, 1]), torch.ones(2, dtype=D)
    bce = lambda p, t: -(t * math.log(p) + (1 - t) * math.log(1 - p))  # noqa: E731
    ctr = CenternessQuality(feat_channels=1).double()
    out = ctr.loss(cls, pos.reg, pos.extra, labels, lw, pos, avg_factor=2.0)
    close(out["loss_quality"], (LN2 + bce(0.75, 0.5)) / (2 + torch.finfo(torch.float32).eps))
    close(ctr.box_weight(pos), [1.0, 0.5])  # ATSS weights GIoU by the centerness target
    iou = IoUQuality(feat_channels=1).double()
    out = iou.loss(cls, pos.reg, pos.extra, labels, lw, pos, avg_factor=2.0)
    close(out["loss_quality"], (LN2 + bce(0.75, 0.25)) / (2 + torch.finfo(torch.float32).eps))
    close(iou.box_weight(pos), [1.0, 1.0])
    # the classification term is the focal loss, normalised by the head's avg_factor
    close(out["loss_cls"], sigmoid_focal_loss(cls, labels).sum() / (2 + torch.finfo(torch.float32).eps))
    # no positive: an exact zero that keeps the branch in the graph
    extra = torch.randn(5, 1, dtype=D, requires_grad=True)
    none = ctr.loss(torch.zeros(5, 2, dtype=D), torch.zeros(5, 4, dtype=D), extra, torch.full((5,), 2),
                    torch.ones(5, dtype=D), None, avg_factor=1.0)
    assert none["loss_quality"].item() == 0 and none["loss_quality"].requires_grad


def test_separate_branch_scores_are_products_thresholded_on_the_class():
    torch.manual_seed(0)
    h = GFLHead(2, in_channels=8, feat_channels=8, stacked_convs=1, strides=(8,),
                config=HeadConfig(norm_num_groups=4, quality="centerness")).double()
    cls = torch.full((1, 2, 2, 2), -9.0, dtype=D)
    cls[0, 1, 0, 1] = math.log(9.0)  # class score .9 at anchor (x=1, y=0)
    reg = torch.zeros(1, h.reg_channels, 2, 2, dtype=D)
    reg[0, -1] = -math.log(99.0)  # quality .01 everywhere: the product .009 is under score_thr
    meta = [dict(img_shape=(16, 16), pad_shape=(16, 16), scale_factor=(1.0, 1.0))]
    out = h.predict([cls], [reg], meta, with_nms=False)[0]
    assert out["labels"].tolist() == [1]  # kept: mmdet 3.x thresholds the class score alone
    close(out["scores"], [0.9 * 0.01])


# ----------------------------------------------------------------- implicit weighting (Table 1a's guided rows)
def test_guided_focal_loss_by_hand():
    # a positive of class 0 at (5, 2) in the box (0, 0, 10, 10): centerness sqrt(2/8 * 1) = 0.5, IoU
    # 0.25; logits (0, 0): alpha (1-p)^2 ln 2 + (1-alpha) p^2 ln 2 = (.0625 + .1875) ln 2 = .25 ln 2.
    # A negative with logits (0, 0): 2 * .75 * .25 ln 2 = .375 ln 2. Normaliser: avg_factor 1 (+ eps).
    pos = positives([0.0], [0.25], torch.tensor([[5.0, 2.0]], dtype=D), torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=D))
    pos = Positives(**{**pos.__dict__, "extra": torch.zeros(1, 0, dtype=D)})
    cls = torch.zeros(2, 2, dtype=D, requires_grad=True)
    labels, lw = torch.tensor([0, 2]), torch.ones(2, dtype=D)
    for q, w in ((CenternessGuidedQuality(), 0.5), (IoUGuidedQuality(), 0.25)):
        assert q.extra_channels == 0 and q.branch(torch.zeros(1, 4, 2, 2)) is None
        out = q.loss(cls, pos.reg, pos.extra, labels, lw, pos, avg_factor=1.0)
        assert list(out) == ["loss_cls"]
        close(out["loss_cls"], (w * 0.25 * LN2 + 0.375 * LN2) / (1 + AVG_EPS))
        scores, factor = q.scores(cls.detach(), pos.reg, pos.extra)
        assert factor is None and torch.equal(scores, cls.detach().sigmoid())  # the class score alone
    close(CenternessGuidedQuality().box_weight(pos), [0.5])  # as ATSS's centerness
    close(IoUGuidedQuality().box_weight(pos), [1.0])  # as the IoU branch
    # the weight scales the positive's gradient and is itself not trained: label 0's d/dx = w * dFL/dx
    ref = torch.zeros(2, 2, dtype=D, requires_grad=True)
    sigmoid_focal_loss(ref, labels).sum().backward()
    cls.grad = None
    CenternessGuidedQuality().loss(cls, pos.reg, pos.extra, labels, lw, pos, 1.0)["loss_cls"].backward()
    close(cls.grad[0], 0.5 * ref.grad[0] / (1 + AVG_EPS))
    close(cls.grad[1], ref.grad[1] / (1 + AVG_EPS))
    # no positive: plain focal loss
    none = IoUGuidedQuality().loss(cls, pos.reg, pos.extra, torch.tensor([2, 2]), lw, None, 1.0)["loss_cls"]
    close(none, 2 * 0.375 * LN2 / (1 + AVG_EPS))


# ----------------------------------------------------------------- QFL beta (Table 1c) and QFL on probabilities
def test_qfl_beta_zero_is_bce_on_the_soft_target_with_a_finite_gradient():
    x = torch.tensor([[0.0, 1.5], [-2.0, 0.3]], dtype=D, requires_grad=True)
    labels, scores = torch.tensor([0, 2]), torch.tensor([0.5, 0.0], dtype=D)  # p == q at (0, 0)
    loss = quality_focal_loss(x, labels, scores, beta=0.0)
    t = torch.tensor([[0.5, 0.0], [0.0, 0.0]], dtype=D)
    close(loss, F.binary_cross_entropy_with_logits(x, t, reduction="none").sum(1))
    loss.sum().backward()
    close(x.grad, x.detach().sigmoid() - t)  # d BCE / dx = p - t, finite where p == t
    for beta in (0.5, 1.0):
        y = x.detach().clone().requires_grad_()
        quality_focal_loss(y, labels, scores, beta=beta).sum().backward()
        assert torch.isfinite(y.grad).all()
        z = x.detach().clone().requires_grad_()
        close(quality_focal_loss(y, labels, scores, beta), quality_focal_loss_autograd(z, labels, scores, beta))


def test_qfl_on_probabilities_by_hand_and_against_the_logit_form():
    # p = .5 positive with IoU target .5: |q - p| = 0 -> 0; p = .5 negative: -ln(.5) * .5^2
    p = torch.tensor([[0.5, 0.5]], dtype=D)
    close(quality_focal_loss_prob(p, torch.tensor([0]), torch.tensor([0.5], dtype=D)), [0.25 * LN2])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 5, generator=g, dtype=D)
    labels = torch.randint(0, 6, (30,), generator=g)
    scores = torch.rand(30, generator=g, dtype=D)
    close(quality_focal_loss_prob(x.sigmoid(), labels, scores), quality_focal_loss(x, labels, scores), tol=1e-10)


# ----------------------------------------------------------------- DGQP (GFLv2)
def test_dgqp_features_by_hand():
    side0 = [0.05, 0.1, 0.15, 0.3, 0.4]  # top 4: .4 .3 .15 .1, mean .2375
    side1 = [1.0, 0.0, 0.0, 0.0, 0.0]  # a Dirac: 1 0 0 0, mean .25
    side2 = [0.2] * 5  # flat: .2 .2 .2 .2, mean .2
    side3 = [0.0, 0.5, 0.5, 0.0, 0.0]  # two edges: .5 .5 0 0, mean .25
    logits = torch.tensor(side0 + side1 + side2 + side3, dtype=D).log()[None]  # [1, 4*5], log 0 = -inf is fine
    f = dgqp_features(logits, reg_max=4, topk=4)
    assert f.shape == (1, 20)
    close(f[0], [0.4, 0.3, 0.15, 0.1, 0.2375, 1, 0, 0, 0, 0.25, 0.2, 0.2, 0.2, 0.2, 0.2, 0.5, 0.5, 0, 0, 0.25])


def test_dgqp_module_layout_init_and_joint_score():
    torch.manual_seed(0)
    q = DGQPQuality(reg_max=16)
    sd = q.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "reg_conf.0.weight": (64, 20, 1, 1), "reg_conf.0.bias": (64,),
        "reg_conf.2.weight": (1, 64, 1, 1), "reg_conf.2.bias": (1,)}
    h = GFLHead(3, in_channels=8, feat_channels=8, stacked_convs=1,
                config=HeadConfig(norm_num_groups=4, quality="dgqp"))
    w = h.quality.reg_conf[0].weight
    assert abs(w.std().item() - 0.01) < 2e-3 and h.quality.reg_conf[2].bias.item() == 0
    reg = torch.randn(6, 68)
    cls = torch.randn(6, 3)
    qual = h.quality.quality(reg)
    assert qual.shape == (6,) and ((qual > 0.49) & (qual < 0.51)).all()  # tiny init weights: sigmoid(~0)
    close(h.quality.scores(cls, reg, reg[:, :0])[0], cls.sigmoid() * qual[:, None], tol=1e-6)
    # the loss reaches the class logits, the distribution and both 1x1 convs
    x, r = cls.clone().requires_grad_(), reg.clone().requires_grad_()
    loss = h.quality.loss(x, r, r[:, :0], torch.tensor([0, 3, 3, 1, 3, 3]), torch.ones(6),
                          None, avg_factor=1.0)["loss_cls"]
    loss.backward()
    assert x.grad.abs().sum() > 0 and r.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in h.quality.parameters())


# ----------------------------------------------------------------- box representations (Table 2a)
def test_dgqp_quality_is_the_1x1_convs_and_normalises_box_losses_by_the_weights_sum():
    torch.manual_seed(0)
    q = DGQPQuality(reg_max=16)
    for m in q.reg_conf:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.5)
            torch.nn.init.normal_(m.bias, std=0.5)
    reg = torch.randn(7, 68)
    conv = q.reg_conf(dgqp_features(reg, 16, 4)[:, :, None, None]).reshape(-1)  # GFocalV2's layout
    close(q.quality(reg), conv, tol=1e-6)
    # GFocalV2 divides the GIoU and DFL sums by the weights' sum itself; the reference GFL
    # (mmdetection 3.3) by max(sum, 1)
    assert q.box_norm(0.05) == 0.05 and q.box_norm(3.0) == 3.0 and q.box_norm(0.0) == 1.0
    assert q.box_norm(1e-15) == 1e-15  # no fallback to 1 for a tiny sum: only an exact 0 (all weights 0)
    assert build_quality(HeadConfig(quality="qfl"), feat_channels=8, reg_max=16).box_norm(0.05) == 1.0


def test_qfl_in_log_space_equals_the_probability_form_where_both_are_accurate():
    g = torch.Generator().manual_seed(2)
    c, z = torch.randn(40, 3, generator=g, dtype=D) * 3, torch.randn(40, 1, generator=g, dtype=D) * 3
    labels = torch.randint(0, 4, (40,), generator=g)
    scores = torch.rand(40, generator=g, dtype=D)
    ls = F.logsigmoid(c) + F.logsigmoid(z)
    for beta in (2.0, 1.0, 0.0):
        close(quality_focal_loss_log(ls, labels, scores, beta),
              quality_focal_loss_prob(c.sigmoid() * z.sigmoid(), labels, scores, beta), tol=1e-10)
    # by hand: s = .5 * .5 = .25, a negative: -ln(.75) * .25^2; a positive with target .25: 0
    ls = torch.full((2, 1), math.log(0.25), dtype=D)
    close(quality_focal_loss_log(ls, torch.tensor([1, 0]), torch.tensor([0.0, 0.25], dtype=D)),
          [-math.log(0.75) * 0.0625, 0.0])


def test_qfl_in_log_space_keeps_the_gradient_of_an_underflowing_product():
    # a positive with IoU target t = .8 and joint score s = 1e-20: dL/dlog s = -t (s - t)^2 + O(s)
    # = -t^3. torch's BCE on s divides by max(s(1-s), 1e-12) and returns ~1e-8 of it.
    t = 0.8
    for dtype, log_s in ((D, math.log(1e-20)), (torch.float32, math.log(1e-20)), (torch.float32, -200.0)):
        ls = torch.tensor([[log_s]], dtype=dtype, requires_grad=True)  # -200: s underflows to 0 in float32
        quality_focal_loss_log(ls, torch.tensor([0]), torch.tensor([t], dtype=dtype)).sum().backward()
        assert torch.isfinite(ls.grad).all()
        torch.testing.assert_close(ls.grad.double(), torch.tensor([[-t ** 3]], dtype=D), rtol=1e-6, atol=0)
    lp = torch.tensor([[math.log(1e-20)]], dtype=D, requires_grad=True)
    quality_focal_loss_prob(lp.exp(), torch.tensor([0]), torch.tensor([t], dtype=D)).sum().backward()
    assert abs(lp.grad.item()) < 1e-6  # the probability form: the gradient has vanished
    # a negative at s = 1 exactly: log(1 - s) floored at log(tiny), the loss and gradient finite
    one = torch.zeros(1, 1, requires_grad=True)
    loss = quality_focal_loss_log(one, torch.tensor([1]), torch.zeros(1))
    loss.sum().backward()
    assert loss.item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny), rel=1e-6)
    assert torch.isfinite(one.grad).all()


def test_dgqp_loss_gradient_reaches_a_class_logit_whose_joint_score_underflows():
    torch.manual_seed(0)
    q = DGQPQuality(reg_max=4).double()
    reg = torch.zeros(1, 20, dtype=D)  # flat distributions; DGQP at init: quality ~ .5
    x = torch.tensor([[-46.0, -5.0]], dtype=D, requires_grad=True)  # sigmoid(-46) ~ 1e-20
    pos = Positives(index=torch.tensor([0]), cls=x.detach(), reg=reg, extra=reg[:, :0],
                    points=torch.zeros(1, 2, dtype=D), gt_boxes=torch.zeros(1, 4, dtype=D),
                    iou=torch.tensor([0.8], dtype=D))
    loss = q.loss(x, reg, reg[:, :0], torch.tensor([0]), torch.ones(1, dtype=D), pos, avg_factor=1.0)["loss_cls"]
    loss.backward()
    # d log s / dx = 1 - sigmoid(x) ~ 1, so dL/dx ~ -t^3 / (1 + eps) for the gt class
    torch.testing.assert_close(x.grad[0, 0], torch.tensor(-0.8 ** 3, dtype=D), rtol=1e-6, atol=0)


def test_dirac_decode_by_hand():
    c = DiracCoder()
    d = c.decode(torch.tensor([[1.0, 2.0, 3.0, -4.0]], dtype=D))
    close(d, [[1.0, 2.0, 3.0, 0.0]])  # a negative distance would flip the box: clamped as FCOS does
    close(distance2bbox(torch.tensor([[10.0, 10.0]], dtype=D), d * 8), [[2.0, -6.0, 34.0, 10.0]])
    with pytest.raises(ValueError, match="no distribution"):
        c.distribution(d)
    assert (c.channels, IntegralCoder(8).channels, DFLCoder(12).channels) == (4, 36, 52)


def test_dirac_predict_by_hand():
    h = GFLHead(1, in_channels=8, feat_channels=8, stacked_convs=1, strides=(8,),
                config=HeadConfig(norm_num_groups=4, quality="none", box="dirac")).double()
    assert h.reg_channels == 4 and h.integral is None
    cls = torch.full((1, 1, 2, 2), -9.0, dtype=D)
    cls[0, 0, 1, 1] = 0.0  # score .5 at the anchor centred on (8, 8)
    reg = torch.tensor([0.5, 0.25, 1.0, 2.0], dtype=D).view(1, 4, 1, 1).expand(1, 4, 2, 2)  # non-contiguous
    meta = [dict(img_shape=(64, 64), pad_shape=(64, 64), scale_factor=(1.0, 1.0))]
    out = h.predict([cls], [reg], meta)[0]
    close(out["boxes"], [[8 - 4, 8 - 2, 8 + 8, 8 + 16]])
    close(out["scores"], [0.5])
    with pytest.raises(ValueError, match="distribution"):
        h.predict([cls], [reg], meta, with_dist=True)


def test_gaussian_kl_loss_and_decode_by_hand():
    # per side (mean, log-variance, target): (1, 0, 1.5): d = .5 -> .5^2/2 = .125; (2, ln 4, 2): d = 0
    # -> ln 4 / 2 = ln 2; (3, 0, 5): |d| = 2 > 1 -> 2 - .5 = 1.5; (4, ln 2, 4.5): e^-ln2 * .125 + ln 2 / 2
    mean = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=D)
    log_var = torch.tensor([[0.0, math.log(4.0), 0.0, LN2]], dtype=D)
    target = torch.tensor([[1.5, 2.0, 5.0, 4.5]], dtype=D)
    per_side = [0.125, LN2, 1.5, 0.0625 + LN2 / 2]
    close(kl_box_loss(mean, log_var, target), [per_side])
    c = GaussianCoder()
    assert (c.channels, c.has_distribution, c.extra_loss_names) == (8, False, ("loss_kl",))
    reg = torch.cat([mean * torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=D), log_var], dim=1)  # [1, 8]
    close(c.decode(reg), [[1.0, 2.0, 3.0, 0.0]])  # the means, a negative one clamped as the Dirac's
    # the KL reads the unclamped mean: for the 4th side -4 against 4.5, |d| = 8.5 -> e^-ln2 * 8 + ln 2 / 2
    ctr = torch.tensor([[10.0, 10.0]], dtype=D)
    gt = torch.tensor([[8.5, 8.0, 15.0, 14.5]], dtype=D)  # distances (1.5, 2, 5, 4.5)
    kl = c.extra_losses(reg, ctr, gt, torch.tensor([0.5], dtype=D), loss_weight=0.25)
    by_hand = 0.25 * 0.5 * (0.125 + LN2 + 1.5 + 4.0 + LN2 / 2) / (4 + AVG_EPS)
    assert list(kl) == ["loss_kl"]
    close(kl["loss_kl"], by_hand)
    close(c.dfl_loss(reg, ctr, gt, torch.ones(1, dtype=D), 0.25), 0.0)
    with pytest.raises(ValueError, match="'gaussian' has no distribution"):
        c.distribution(reg)


def test_bin_interval_decode_and_dfl_target_by_hand():
    # reg_max 4, interval 2: bin j is 2j strides. p = (.1, .2, .3, .25, .15) on every side: the
    # Integral reads .2 + .6 + .75 + .6 = 2.15 bins = 4.3 strides
    p = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=D)
    reg = p.log().repeat(4)[None]  # [1, 20]
    c = DFLCoder(4, bin_interval=2.0)
    close(c.decode(reg), [[4.3] * 4])
    close(DFLCoder(4).decode(reg), [[2.15] * 4])
    # sides 3, 1, 20 and 4 strides = 1.5, 0.5, 10 (clamped to 3.9) and 2 bins
    ctr = torch.tensor([[10.0, 10.0]], dtype=D)
    gt = torch.tensor([[7.0, 9.0, 30.0, 14.0]], dtype=D)
    ce = -p.log()
    sides = [0.5 * ce[1] + 0.5 * ce[2], 0.5 * ce[0] + 0.5 * ce[1], 0.1 * ce[3] + 0.9 * ce[4], ce[2]]
    close(c.dfl_loss(reg, ctr, gt, torch.ones(1, dtype=D), 0.25), 0.25 * sum(sides) / (4 + AVG_EPS))
    # interval 1 is the reference: the same numbers as the default coder, bit for bit
    ref = DFLCoder(4)
    assert torch.equal(DFLCoder(4, bin_interval=1.0).dfl_loss(reg, ctr, gt, torch.ones(1, dtype=D), 0.25),
                       ref.dfl_loss(reg, ctr, gt, torch.ones(1, dtype=D), 0.25))
    with pytest.raises(ConfigError, match="bin_interval must be > 0"):
        IntegralCoder(4, bin_interval=-1.0)


def test_gaussian_head_loss_keys_and_no_positive():
    h, feats, gt, meta = head_and_inputs(quality="centerness", box="gaussian")
    assert h.reg_channels == 9 and h.integral is None
    losses = h.loss(*h(feats), gt, meta)
    assert list(losses) == ["loss_cls", "loss_bbox", "loss_dfl", "loss_kl", "loss_quality"]
    assert losses["loss_kl"].item() != 0 and losses["loss_dfl"].item() == 0
    empty = [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))]
    losses = h.loss(*h(feats), empty, meta)
    assert losses["loss_kl"].item() == 0 and losses["loss_kl"].requires_grad


def test_bin_interval_one_is_the_reference_head():
    h_ref, feats, gt, meta = head_and_inputs()
    h_one, _, _, _ = head_and_inputs(bin_interval=1.0)
    a, b = h_ref.loss(*h_ref(feats), gt, meta), h_one.loss(*h_one(feats), gt, meta)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    h_two, _, _, _ = head_and_inputs(bin_interval=2.0)
    c = h_two.loss(*h_two(feats), gt, meta)
    # twice the bin width: other decoded boxes (so other IoU targets for QFL) and other DFL targets
    assert all(not torch.equal(a[k], c[k]) for k in a)


def head_and_inputs(reg_max: int = 16, **kw):
    """mmdet's unit-test setup, small: random features and one gt of label 2."""
    torch.manual_seed(0)
    h = GFLHead(4, in_channels=1, feat_channels=16, stacked_convs=1, reg_max=reg_max,
                config=HeadConfig(norm_num_groups=4, **kw))
    feats = [torch.rand(1, 1, 256 // s, 256 // s) for s in h.strides]
    meta = [dict(img_shape=(256, 256), pad_shape=(256, 256), scale_factor=(1.0, 1.0))]
    gt = [dict(boxes=torch.tensor([[23.6667, 23.8757, 238.6326, 151.8874]]), labels=torch.tensor([2]))]
    return h, feats, gt, meta


def test_integral_variant_has_no_dfl_term():
    h_dfl, feats, gt, meta = head_and_inputs(box="dfl")
    h_int = GFLHead(4, in_channels=1, feat_channels=16, stacked_convs=1,
                    config=HeadConfig(norm_num_groups=4, box="integral"))
    h_int.load_state_dict(h_dfl.state_dict())  # same keys: only the loss differs
    outs = []
    for h in (h_dfl, h_int):
        h.zero_grad()
        losses = h.loss(*h(feats), gt, meta)
        outs.append(losses)
        (losses["loss_cls"] + losses["loss_bbox"]).backward(retain_graph=True)
        grads = [p.grad.clone() for p in h.parameters()]
        if h is h_int:
            h.zero_grad()
            sum(losses.values()).backward()  # adding the zero DFL term changes no gradient
            assert all(torch.equal(g, p.grad) for g, p in zip(grads, h.parameters()))
    a, b = outs
    assert a["loss_dfl"].item() > 0
    assert b["loss_dfl"].item() == 0 and b["loss_dfl"].requires_grad
    assert math.copysign(1.0, b["loss_dfl"].item()) == 1.0  # +0.0: logs never show "-0.0"
    assert torch.equal(a["loss_cls"], b["loss_cls"]) and torch.equal(a["loss_bbox"], b["loss_bbox"])
    assert list(a) == list(b) == ["loss_cls", "loss_bbox", "loss_dfl"]


@pytest.mark.parametrize("reg_max", [8, 12, 16])
def test_reg_max_variants_build_and_decode(reg_max):
    h, feats, gt, meta = head_and_inputs(reg_max=reg_max)
    assert h.gfl_reg.out_channels == 4 * (reg_max + 1)
    assert torch.equal(h.integral.project, torch.arange(reg_max + 1.0))
    cls, reg = h(feats)
    losses = h.loss(cls, reg, gt, meta)
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    # uniform distributions at init: every side reads reg_max / 2 bins
    close(h.box_coder.decode(torch.zeros(2, 4 * (reg_max + 1))), torch.full((2, 4), reg_max / 2), tol=1e-6)


# ----------------------------------------------------------------- config, builders, state-dict keys
def test_config_fields_defaults_and_errors():
    cfg = get_config("gfl_r50_fpn_1x_coco")
    assert (cfg.quality, cfg.box, cfg.qfl_beta, cfg.reg_max) == ("qfl", "dfl", 2.0, 16)
    assert get_config("gfl_cpu_demo", quality="centerness", box="dirac").quality == "centerness"
    with pytest.raises(ConfigError, match=r"quality must be one of 'none', 'centerness', 'iou', 'centerness_guided', "
                                          r"'iou_guided', 'qfl', 'dgqp', got 'qf'"):
        get_config("gfl_cpu_demo", quality="qf")
    with pytest.raises(ConfigError, match=r"box must be one of 'dirac', 'gaussian', 'integral', 'dfl', got 'gauss'"):
        get_config("gfl_cpu_demo", box="gauss")
    for box in ("dirac", "gaussian"):
        with pytest.raises(ConfigError, match=f"dgqp.*distribution.*not '{box}'"):
            get_config("gfl_cpu_demo", quality="dgqp", box=box)
        with pytest.raises(ConfigError, match=f"bin_interval.*box '{box}' has none"):
            get_config("gfl_cpu_demo", box=box, bin_interval=2)
        with pytest.raises(ConfigError, match="has none"):
            build_box_coder(box, 16, bin_interval=0.5)
    with pytest.raises(ConfigError, match="bin_interval must be > 0"):
        get_config("gfl_cpu_demo", bin_interval=0)
    assert get_config("gfl_cpu_demo").bin_interval == 1.0 and parse_set("bin_interval=0.5") == ("bin_interval", 0.5)
    with pytest.raises(ConfigError, match="expects a string"):
        get_config("gfl_cpu_demo", quality=3)
    with pytest.raises(ConfigError, match="qfl_beta"):
        get_config("gfl_cpu_demo", qfl_beta=-1)
    assert parse_set("quality=iou") == ("quality", "iou") and parse_set("box=integral") == ("box", "integral")
    assert get_config("gfl_cpu_demo", qfl_beta=0).qfl_beta == 0.0
    with pytest.raises(ConfigError, match="quality must be one of"):
        GFLHead(3, config=HeadConfig(quality="centreness"))
    with pytest.raises(ConfigError, match="box must be one of"):
        build_box_coder("delta", 16)
    with pytest.raises(ConfigError, match="dgqp"):
        GFLHead(3, config=HeadConfig(quality="dgqp", box="dirac"))
    kinds = {q: type(build_quality(HeadConfig(quality=q), feat_channels=4, reg_max=16)) for q in QUALITIES}
    assert kinds == dict(none=FocalQuality, centerness=CenternessQuality, iou=IoUQuality,
                         centerness_guided=CenternessGuidedQuality, iou_guided=IoUGuidedQuality, qfl=QFLQuality,
                         dgqp=DGQPQuality)
    assert {b: type(build_box_coder(b, 16)) for b in BOXES} == dict(dirac=DiracCoder, gaussian=GaussianCoder,
                                                                    integral=IntegralCoder, dfl=DFLCoder)


def head_keys(**kw):
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_model("gfl_r50_fpn_1x_coco", **kw).state_dict().items()}


def test_state_dict_keys_change_only_for_new_branches():
    base = head_keys()
    assert len(base) == 368
    for kw in (dict(quality="qfl", box="dfl"), dict(quality="none"), dict(box="integral"), dict(qfl_beta=0.0),
               dict(quality="none", box="integral"), dict(quality="centerness_guided"), dict(quality="iou_guided"),
               dict(bin_interval=2.0)):
        assert head_keys(**kw) == base
    for q in ("centerness", "iou"):
        extra = {k: s for k, s in head_keys(quality=q).items() if k not in base}
        assert extra == {"bbox_head.quality.conv.weight": (1, 256, 3, 3), "bbox_head.quality.conv.bias": (1,)}
    extra = {k: s for k, s in head_keys(quality="dgqp").items() if k not in base}
    assert extra == {"bbox_head.quality.reg_conf.0.weight": (64, 20, 1, 1), "bbox_head.quality.reg_conf.0.bias": (64,),
                     "bbox_head.quality.reg_conf.2.weight": (1, 64, 1, 1), "bbox_head.quality.reg_conf.2.bias": (1,)}
    dirac = head_keys(box="dirac")
    assert set(base) - set(dirac) == {"bbox_head.integral.project"} and set(dirac) <= set(base)
    assert dirac["bbox_head.gfl_reg.weight"] == (4, 256, 3, 3)
    gaussian = head_keys(box="gaussian")
    assert set(gaussian) == set(dirac) and gaussian["bbox_head.gfl_reg.weight"] == (8, 256, 3, 3)
    assert head_keys(reg_max=8)["bbox_head.gfl_reg.weight"] == (36, 256, 3, 3)


# ----------------------------------------------------------------- every variant trains and predicts
# Table 1a (quality, implicit rows included), Table 2a (box, Gaussian included), Table 3 (QFL x DFL),
# Table 1c/2b spot checks; Table 2c's bin interval below (test_bin_interval_trains_and_predicts)
VARIANTS = [
    dict(quality="none", box="dfl"), dict(quality="centerness", box="dfl"), dict(quality="iou", box="dfl"),
    dict(quality="qfl", box="dfl"), dict(quality="dgqp", box="dfl"),
    dict(quality="qfl", box="dirac"), dict(quality="qfl", box="integral"),
    dict(quality="none", box="integral"), dict(quality="none", box="dirac"), dict(quality="dgqp", box="integral"),
    dict(quality="centerness", box="dirac"), dict(quality="qfl", qfl_beta=0.0), dict(quality="qfl", reg_max=8),
    dict(quality="centerness_guided", box="dirac"), dict(quality="iou_guided", box="dirac"),
    dict(quality="centerness", box="gaussian"), dict(quality="qfl", box="dirac", qfl_beta=4.0),
]


@pytest.fixture(scope="module")
def tiny_batch():
    """4 synthetic images resized to 96x96 with their boxes; the 4 synthetic classes folded into 3."""
    rng = np.random.default_rng(0)
    images, targets = [], []
    for _ in range(4):
        img, objs = render_image(rng)
        h, w = img.shape[:2]
        img = cv2.resize(img, (96, 96), interpolation=cv2.INTER_LINEAR)
        s = torch.tensor([96 / w, 96 / h, 96 / w, 96 / h])
        boxes = torch.tensor([o["box"] for o in objs], dtype=torch.float32) * s
        targets.append(dict(boxes=boxes, labels=torch.tensor([o["cls"] % 3 for o in objs])))
        images.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))))
    x, metas = preprocess(images, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    return x, targets, metas


def _trains_and_predicts(model, batch, box="dfl", separate=False, steps=30):
    """A few AdamW steps on the tiny batch: finite losses with the variant's keys that fall, every
    parameter used; then predict returns sorted, valid detections."""
    x, targets, metas = batch
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    keys = ["loss_cls", "loss_bbox", "loss_dfl"] + (["loss_kl"] if box == "gaussian" else []) + \
        (["loss_quality"] if separate else [])
    history = []
    for it in range(steps):
        losses = model.loss(x, targets, metas)
        assert list(losses) == keys
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        if it == 0:  # every parameter is used (DDP runs with find_unused_parameters=False)
            unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not unused
        opt.step()
        history.append(total.item())
        if box != "dfl":
            assert losses["loss_dfl"].item() == 0
    # GFL-style box weights start near the 0.01 prior, so the loss first rises: compare means of 5
    start, end = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert end < 0.85 * start, f"loss {start:.3f} -> {end:.3f}: {[round(v, 3) for v in history]}"

    model.eval()
    with torch.no_grad():
        out = model.predict(x, metas)
    assert len(out) == 4 and sum(o["boxes"].shape[0] for o in out) > 0
    for o in out:
        assert o["boxes"].shape[1] == 4 and o["labels"].dtype == torch.int64
        assert ((o["scores"] > 0) & (o["scores"] <= 1)).all() and (o["labels"] < 3).all()
        assert torch.all(o["scores"][:-1] >= o["scores"][1:])
    return out


@pytest.mark.parametrize("kw", VARIANTS, ids=[",".join(f"{k}={v}" for k, v in kw.items()) for kw in VARIANTS])
def test_variant_trains_and_predicts(kw, tiny_batch):
    torch.manual_seed(0)
    model = build_model("gfl_cpu_demo", num_classes=3, pretrained_backbone=False, **kw).train()
    # beta=0 is plain BCE on the soft target: the positives' floor is the entropy of IoU targets that
    # rise as the boxes improve and nothing down-weights them, so its loss peaks later (near step 20).
    steps = 60 if kw.get("qfl_beta") == 0 else 30
    _trains_and_predicts(model, tiny_batch, kw.get("box", "dfl"), kw["quality"] in ("centerness", "iou"), steps)


@pytest.mark.parametrize("interval", [0.5, 2.0])
def test_bin_interval_trains_and_predicts(interval, tiny_batch):
    torch.manual_seed(0)
    model = build_model("gfl_cpu_demo", num_classes=3, pretrained_backbone=False).train()
    # the coder holds no tensors, so the interval is a coder of its own on the same weights
    model.bbox_head.box_coder = build_box_coder("dfl", model.cfg.reg_max, bin_interval=interval)
    out = _trains_and_predicts(model, tiny_batch)
    # a uniform distribution reads reg_max/2 bins, i.e. reg_max/2 * interval strides
    close(model.bbox_head.box_coder.decode(torch.zeros(1, 4 * (model.cfg.reg_max + 1))),
          torch.full((1, 4), model.cfg.reg_max / 2 * interval), tol=1e-6)
    assert all(torch.isfinite(o["boxes"]).all() for o in out)
