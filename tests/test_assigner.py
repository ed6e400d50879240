"""ATSS against mmdetection's ATSSAssigner: exact indices, labels and overlaps."""
import pytest
import torch

import gflnb.assigner as assigner_mod
from conftest import load_fixture
from gflnb.assigner import NEG_INF, atss_assign

ATSS = load_fixture("atss.pt")["cases"]


@pytest.mark.parametrize("case", ATSS, ids=[c["name"] for c in ATSS])
def test_atss_matches_reference_exactly(case):
    gt_inds, labels, max_overlaps = atss_assign(case["anchors"], case["num_level_anchors"], case["gt_bboxes"],
                                                case["gt_labels"], topk=9)
    assert torch.equal(gt_inds, case["assigned_gt_inds"])
    assert torch.equal(labels, case["assigned_labels"])
    assert torch.equal(max_overlaps, case["max_overlaps"])
    counts = [int((gt_inds == g + 1).sum()) for g in range(case["num_gts"])]
    assert counts == list(case["num_pos_per_gt"])


def test_tiny_gt_gets_no_positive():
    c = next(c for c in ATSS if c["name"] == "320x320_tiny_gt")
    gt_inds, _, _ = atss_assign(c["anchors"], c["num_level_anchors"], c["gt_bboxes"], c["gt_labels"])
    assert 0 in [int((gt_inds == g + 1).sum()) for g in range(c["num_gts"])]


def test_chunked_distances_give_identical_assignment(monkeypatch):
    # a chunk of one gt at a time must not change a single index (tie order included)
    c = next(c for c in ATSS if c["name"] == "H384xW512_50gts")
    monkeypatch.setattr(assigner_mod, "MAX_CHUNK_ELEMENTS", 1)
    gt_inds, labels, mo = atss_assign(c["anchors"], c["num_level_anchors"], c["gt_bboxes"], c["gt_labels"])
    assert torch.equal(gt_inds, c["assigned_gt_inds"]) and torch.equal(mo, c["max_overlaps"])


def test_mmdet_toy_case_and_empty_inputs():
    priors = torch.tensor([[0, 0, 10, 10], [10, 10, 20, 20], [5, 5, 15, 15], [32, 32, 38, 42.]])
    gts = torch.tensor([[0, 0, 10, 9], [0, 10, 10, 19.]])
    gt_inds, _, _ = atss_assign(priors, [4], gts, torch.tensor([2, 3]))
    assert gt_inds.tolist() == [1, 0, 0, 0]
    gt_inds, labels, mo = atss_assign(priors, [4], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert gt_inds.tolist() == [0] * 4 and labels.tolist() == [-1] * 4 and mo.tolist() == [0] * 4
    gt_inds, labels, mo = atss_assign(torch.zeros(0, 4), [0], gts, torch.tensor([2, 3]))
    assert gt_inds.shape == labels.shape == mo.shape == (0,)


def test_non_positive_sentinel_and_mismatched_levels():
    c = ATSS[0]
    gt_inds, _, mo = atss_assign(c["anchors"], c["num_level_anchors"], c["gt_bboxes"], c["gt_labels"])
    assert (mo[gt_inds == 0] == NEG_INF).all()
    with pytest.raises(ValueError, match="num_level_anchors"):
        atss_assign(c["anchors"], [10], c["gt_bboxes"], c["gt_labels"])
