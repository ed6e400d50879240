"""Integral, anchors, distance coding and NMS."""
import pytest
import torch

from conftest import assert_close, load_fixture
from gflnb.boxes import (batched_nms, bbox2distance, distance2bbox, featmap_sizes_for, grid_anchors, integral,
                         valid_flags)

INTEGRAL = load_fixture("integral.pt")


@pytest.mark.parametrize("i", range(3))
def test_integral_matches_reference(i):
    c = INTEGRAL["cases"][i]
    assert_close(integral(c["x"], c["reg_max"]), c["out"])
    assert_close(integral(c["x"].double()).float(), c["out"])


def test_integral_head_layout_and_project():
    fmap = INTEGRAL["fmap_68xHxW"]
    assert_close(integral(fmap.permute(1, 2, 0)).reshape(-1, 4), INTEGRAL["fmap_out_HWx4"])
    from gflnb.model.head import Integral
    assert torch.equal(Integral(16).project, INTEGRAL["project"])


def test_grid_anchors_equal_reference_for_every_atss_case():
    for c in load_fixture("atss.pt")["cases"]:
        assert featmap_sizes_for(c["img_hw"], [8, 16, 32, 64, 128]) == [tuple(s) for s in c["featmap_sizes"]]
        anchors = grid_anchors(c["featmap_sizes"], [8, 16, 32, 64, 128])
        assert [a.shape[0] for a in anchors] == c["num_level_anchors"]
        assert torch.equal(torch.cat(anchors), c["anchors"])


def test_anchor_centres_have_no_half_stride_offset():
    a = grid_anchors([(2, 3)], [16])[0]
    centres = (a[:, :2] + a[:, 2:]) / 2
    assert torch.equal(centres[:, 0], torch.tensor([0., 16., 32., 0., 16., 32.]))
    assert torch.equal(centres[:, 1], torch.tensor([0., 0., 0., 16., 16., 16.]))
    assert torch.equal(a[0], torch.tensor([-64., -64., 64., 64.]))


def test_valid_flags_use_each_images_pad_shape(head_fixture):
    c = head_fixture["cases"][0]
    flags = [torch.cat(valid_flags(c["featmap_sizes"], c["strides"], m["pad_shape"])) for m in c["img_metas"]]
    ref = c["scenarios"][0]["targets"]["valid_flags"]
    assert all(torch.equal(a, b) for a, b in zip(flags, ref))
    assert int(flags[1].sum()) == 1538


def test_distance_coding_roundtrip_and_clamp():
    pts = torch.tensor([[10., 20.], [5., 5.]], dtype=torch.float64)
    d = torch.tensor([[1., 2., 3., 4.], [10., 0.5, 20., 1.]], dtype=torch.float64)
    boxes = distance2bbox(pts, d)
    assert_close(bbox2distance(pts, boxes), d)
    clamped = distance2bbox(pts, d, max_shape=(6, 12))
    assert clamped[:, 0::2].min() >= 0 and clamped[:, 0::2].max() <= 12 and clamped[:, 1::2].max() <= 6
    assert bbox2distance(pts, boxes, max_dis=16).max() <= 15.9
    assert bbox2distance(pts, torch.tensor([[0., 0., 100., 100.]] * 2, dtype=torch.float64), 16, 0.1).max() == 15.9


def test_batched_nms_is_class_aware_and_sorted():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    labels = torch.tensor([0, 0, 1, 0])
    keep = batched_nms(boxes, scores, labels, 0.6)
    assert keep.tolist() == [3, 0, 2]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.6).numel() == 0
