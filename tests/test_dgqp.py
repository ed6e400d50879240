"""GFLv2's DGQP and the box-loss weights (issue 18, item 4): GFocalV2 detaches the whole joint score
it weights GIoU and DFL with; ``dgqp_weight_grad=True`` keeps the DGQP's parameters in that graph
(gflnb before the fix), where the box losses push the quality down. By hand, at the head, and
trained on the tiny batch of test_variants."""
import pytest
import torch
from test_variants import _trains_and_predicts, tiny_batch  # noqa: F401  (a fixture)

from gflnb import build_model
from gflnb.config import ConfigError, get_config
from gflnb.model.quality import DGQPQuality, Positives

D = torch.float64


def _dgqp_at_half(weight_grad: bool) -> DGQPQuality:
    """A DGQP whose logit is its last bias, 0: zero weights, so q = sigmoid(0) = 1/2 everywhere."""
    q = DGQPQuality(reg_max=4, weight_grad=weight_grad).double()
    with torch.no_grad():
        for p in q.parameters():
            p.zero_()
    return q


def _positives(n: int) -> Positives:
    reg = torch.zeros(n, 20, dtype=D)
    return Positives(index=torch.arange(n), cls=torch.zeros(n, 3, dtype=D), reg=reg, extra=reg[:, :0],
                     points=torch.zeros(n, 2, dtype=D), gt_boxes=torch.zeros(n, 4, dtype=D),
                     iou=torch.full((n,), 0.5, dtype=D))


def test_box_weights_gradient_by_hand():
    # two positives, sigmoid(cls) = 1/2 and q = 1/2: weights w = 1/4 each, W = 1/2 (detached, as the head's
    # norm). With per-positive box losses L = (1, 3), sum(L w) / W = 2; through the weights,
    # d/dz = sum(L w (1 - q)) / W = (1 + 3) * 1/4 * 1/2 / (1/2) = 1: the quality pushed down.
    L = torch.tensor([1.0, 3.0], dtype=D)
    for weight_grad, expected in ((True, 1.0), (False, None)):
        q = _dgqp_at_half(weight_grad)
        w = q.box_weight(_positives(2))
        torch.testing.assert_close(w, torch.full((2,), 0.25, dtype=D))
        assert w.requires_grad is weight_grad
        if weight_grad:
            ((L * w).sum() / w.sum().detach()).backward()
            assert q.reg_conf[2].bias.grad.item() == pytest.approx(expected, rel=1e-12)
            assert q.reg_conf[0].weight.grad.abs().sum() == 0  # the hidden layer is 0: relu'(0) = 0


def test_weight_grad_changes_the_dgqp_gradient_not_the_losses(tiny_batch):
    x, targets, metas = tiny_batch
    grads, values = {}, {}
    for weight_grad in (False, True):
        torch.manual_seed(0)
        model = build_model("gfl_cpu_demo", num_classes=3, pretrained_backbone=False, quality="dgqp",
                            dgqp_weight_grad=weight_grad).train()
        losses = model.loss(x, targets, metas)
        values[weight_grad] = {k: v.item() for k, v in losses.items()}
        params = list(model.bbox_head.quality.parameters())
        box = losses["loss_bbox"] + losses["loss_dfl"]
        grads[weight_grad] = torch.autograd.grad(box, params, allow_unused=True)
    assert values[False] == values[True]  # the same forward numbers
    assert all(g is None for g in grads[False])  # GFocalV2: the box losses do not reach the DGQP
    assert grads[True][-1].item() > 0  # they push its logit down (d loss / d bias > 0)


def test_weight_grad_needs_dgqp():
    assert get_config("gfl_cpu_demo", quality="dgqp", dgqp_weight_grad=True).dgqp_weight_grad
    with pytest.raises(ConfigError, match="dgqp_weight_grad is an option of quality 'dgqp', not 'qfl'"):
        get_config("gfl_cpu_demo", dgqp_weight_grad=True)


def test_dgqp_trains_and_predicts_and_its_quality_rises(tiny_batch):
    # AdamW lr 2e-3 for 30 steps: with the weights detached (the default) QFL raises the quality logit's
    # bias; with dgqp_weight_grad the box losses lower it (the first steps of the demo's collapse)
    bias = {}
    for weight_grad in (False, True):
        torch.manual_seed(0)
        model = build_model("gfl_cpu_demo", num_classes=3, pretrained_backbone=False, quality="dgqp",
                            dgqp_weight_grad=weight_grad).train()
        if not weight_grad:
            _trains_and_predicts(model, tiny_batch)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
            for _ in range(30):
                opt.zero_grad()
                sum(model.loss(*tiny_batch).values()).backward()
                opt.step()
        bias[weight_grad] = model.bbox_head.quality.reg_conf[2].bias.item()
    assert bias[False] > 0.02 and bias[True] < -0.02, bias
