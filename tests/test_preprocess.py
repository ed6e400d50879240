"""Resize arithmetic, normalization and padding against mmdetection's preprocessor."""
import numpy as np
import pytest
import torch

from conftest import load_fixture
from gflnb.data.preprocess import pad_batch, preprocess, rescale_size, resize_keep_ratio

PRE = load_fixture("preprocess.pt")


def test_normalize_and_pad_exact():
    batch, metas = preprocess(PRE["inputs_uint8_bgr"], PRE["mean"], PRE["std"], 32)
    assert torch.equal(batch, PRE["batch_inputs"])
    assert [list(m["pad_shape"]) for m in metas] == PRE["pad_shapes"]
    assert list(metas[0]["batch_input_shape"]) == PRE["batch_input_shape"]


@pytest.mark.parametrize("c", PRE["resize_cases"], ids=lambda c: f"{c['ori_hw']}->{c['scale']}")
def test_resize_arithmetic(c):
    h, w = c["ori_hw"]
    (nw, nh), _ = rescale_size(w, h, c["scale"])
    assert [nh, nw] == list(c["new_hw"])
    assert (nw / w, nh / h) == tuple(c["scale_factor_wh"])


def test_cv2_bilinear_resize_matches():
    e = PRE["cv2_resize_example"]
    out, sf = resize_keep_ratio(e["src_hwc_uint8"].numpy(), e["scale"])
    assert np.array_equal(out, e["dst_hwc_uint8"].numpy())


def test_pad_batch_zero_after_normalisation():
    a, b = torch.ones(3, 10, 33), torch.ones(3, 40, 5)
    batch, pads = pad_batch([a, b])
    assert batch.shape == (2, 3, 64, 64) and pads == [(32, 64), (64, 32)]
    assert batch[0, :, 10:].abs().sum() == 0 and batch[0, :, :10, :33].eq(1).all()
