"""QFL, DFL and GIoU against mmdetection 3.3's own outputs, with gradients."""
import pytest
import torch

from conftest import assert_close, load_fixture
from gflnb.losses import (distribution_focal_loss, giou_loss, quality_focal_loss, quality_focal_loss_autograd,
                          reduce_loss)
from gflnb.boxes import aligned_iou, box_iou, generalized_iou

QFL = load_fixture("qfl.pt")["cases"]
DFL = load_fixture("dfl.pt")["cases"]
GIOU = load_fixture("giou.pt")["cases"]


@pytest.mark.parametrize("i", range(len(QFL)))
def test_qfl_matches_reference(i):
    c = QFL[i]
    x = c["logits"].clone().requires_grad_()
    loss = quality_focal_loss(x, c["labels"], c["scores"], beta=c["beta"])
    assert_close(loss.detach(), c["loss"])
    loss.sum().backward()
    assert_close(x.grad, c["grad"])
    x2 = c["logits"].clone().requires_grad_()
    red = reduce_loss(quality_focal_loss(x2, c["labels"], c["scores"]), c["weight"], avg_factor=c["avg_factor"])
    assert_close(red.detach(), c["loss_reduced"])
    red.backward()
    assert_close(x2.grad, c["grad_reduced"])


@pytest.mark.parametrize("i", range(len(QFL)))
def test_qfl_fused_backward_equals_autograd(i):
    c = QFL[i]
    for beta in (2.0, 1.5):
        a = c["logits"].clone().requires_grad_()
        b = c["logits"].clone().requires_grad_()
        la = quality_focal_loss(a, c["labels"], c["scores"], beta)
        lb = quality_focal_loss_autograd(b, c["labels"], c["scores"], beta)
        assert_close(la.detach(), lb.detach())
        (la * torch.linspace(0.5, 2, la.numel(), dtype=la.dtype)).sum().backward()
        (lb * torch.linspace(0.5, 2, lb.numel(), dtype=lb.dtype)).sum().backward()
        assert_close(a.grad, b.grad)


def test_qfl_label_score_equals_onehot_target():
    # mmdet's unit test: the (label, score) target equals the one-hot * score tensor target
    c = QFL[1]
    onehot = torch.zeros_like(c["logits"])
    pos = c["labels"] < c["logits"].shape[1]
    onehot[pos, c["labels"][pos]] = c["scores"][pos]
    p = c["logits"].sigmoid()
    dense = torch.nn.functional.binary_cross_entropy_with_logits(c["logits"], onehot, reduction="none")
    dense = (dense * (onehot - p).abs().pow(2)).sum(1)
    assert_close(quality_focal_loss(c["logits"], c["labels"], c["scores"]), dense)


def test_qfl_ignores_scores_of_negatives_and_keeps_dtype():
    c = QFL[3]
    assert c["logits"].dtype == torch.float64
    scores = c["scores"].clone()
    neg = c["labels"] == c["logits"].shape[1]
    assert neg.any()
    scores[neg] = 0.77
    out = quality_focal_loss(c["logits"].t().contiguous().t(), c["labels"], scores)  # non-contiguous
    assert out.dtype == torch.float64
    assert_close(out, c["loss"])


@pytest.mark.parametrize("i", range(len(DFL)))
def test_dfl_matches_reference(i):
    c = DFL[i]
    x = c["logits"].clone().requires_grad_()
    loss = distribution_focal_loss(x, c["target"])
    assert_close(loss.detach(), c["loss"])
    loss.sum().backward()
    assert_close(x.grad, c["grad"])
    x2 = c["logits"].clone().requires_grad_()
    red = reduce_loss(distribution_focal_loss(x2, c["target"]), c["weight"], avg_factor=c["avg_factor"],
                      loss_weight=c["loss_weight"])
    assert_close(red.detach(), c["loss_reduced"])
    red.backward()
    assert_close(x2.grad, c["grad_reduced"])


@pytest.mark.parametrize("i", range(len(GIOU)))
def test_giou_matches_reference(i):
    c = GIOU[i]
    p = c["pred"].clone().requires_grad_()
    loss = giou_loss(p, c["target"], eps=c["eps"])
    assert_close(loss.detach(), c["loss"])
    loss.sum().backward()
    assert_close(p.grad, c["grad"])
    assert_close(aligned_iou(c["pred"], c["target"]), c["iou"])
    assert_close(generalized_iou(c["pred"], c["target"]), c["giou"])
    assert_close(box_iou(c["pred"][:8], c["target"][:6]), c["iou_matrix_pred8_target6"])
    p2 = c["pred"].clone().requires_grad_()
    red = reduce_loss(giou_loss(p2, c["target"]), c["weight"], avg_factor=c["avg_factor"],
                      loss_weight=c["loss_weight"])
    assert_close(red.detach(), c["loss_reduced"])
    red.backward()
    assert_close(p2.grad, c["grad_reduced"])


def test_zero_weight_gives_exact_zero_in_graph():
    c = GIOU[0]
    p = c["pred"].clone().requires_grad_()
    red = reduce_loss(giou_loss(p, c["target"]), torch.zeros(64), avg_factor=1.0, loss_weight=2.0)
    assert red.item() == 0.0 and red.requires_grad
    red.backward()
    assert torch.count_nonzero(p.grad) == 0


def test_empty_inputs():
    e4 = torch.zeros(0, 4, requires_grad=True)
    assert giou_loss(e4, torch.zeros(0, 4)).shape == (0,)
    assert reduce_loss(giou_loss(e4, torch.zeros(0, 4)), torch.zeros(0), avg_factor=1.0).item() == 0
    assert distribution_focal_loss(torch.zeros(0, 17), torch.zeros(0)).shape == (0,)
    assert quality_focal_loss(torch.zeros(0, 80), torch.zeros(0, dtype=torch.long), torch.zeros(0)).shape == (0,)


def test_dfl_integer_target_puts_all_weight_on_one_bin():
    logits = torch.randn(3, 17, dtype=torch.float64)
    t = torch.tensor([0.0, 7.0, 15.0], dtype=torch.float64)
    expected = torch.nn.functional.cross_entropy(logits, t.long(), reduction="none")
    assert_close(distribution_focal_loss(logits, t), expected)
