"""AP image by image (gflnb.study.imagewise) against pycocotools itself."""
import contextlib
import io
import json

import numpy as np
import pytest

from gflnb.study.imagewise import ImageMatches, ap, bootstrap_aps, bootstrap_weights, match_images


def _coco(images, anns, cats):
    from pycocotools.coco import COCO
    c = COCO()
    c.dataset = dict(images=images, annotations=anns, categories=cats)
    with contextlib.redirect_stdout(io.StringIO()):
        c.createIndex()
    return c


def _set(n_img=40, seed=0, crowd=False):
    """Ground truths and noisy detections of 3 classes: misses, false positives, duplicates, distinct scores."""
    rng = np.random.default_rng(seed)
    images = [dict(id=i + 1, width=200, height=200) for i in range(n_img)]
    anns, dets = [], []
    for img in images:
        for _ in range(rng.integers(0, 5)):
            x, y, w, h = rng.uniform(0, 150), rng.uniform(0, 150), rng.uniform(5, 50), rng.uniform(5, 50)
            c = int(rng.integers(1, 4))
            anns.append(dict(id=len(anns) + 1, image_id=img["id"], category_id=c, bbox=[x, y, w, h], area=w * h,
                             iscrowd=int(crowd and rng.random() < 0.1)))
            for _ in range(rng.integers(0, 3)):  # detections near it, some of the wrong class
                j = rng.normal(0, 0.15 * min(w, h), 4)
                dets.append(dict(image_id=img["id"], category_id=c if rng.random() < 0.8 else int(rng.integers(1, 4)),
                                 bbox=[x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)], score=rng.random()))
        for _ in range(rng.integers(0, 3)):  # background detections
            dets.append(dict(image_id=img["id"], category_id=int(rng.integers(1, 4)),
                             bbox=[*rng.uniform(0, 150, 2), *rng.uniform(5, 40, 2)], score=rng.random()))
    cats = [dict(id=c, name=f"c{c}") for c in (1, 2, 3)]
    return images, anns, cats, dets


def _pycoco_ap(images, anns, cats, dets):
    from pycocotools.cocoeval import COCOeval
    gt = _coco(images, anns, cats)
    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(gt, gt.loadRes(dets), "bbox")
        E.params.imgIds = sorted(i["id"] for i in images)
        E.evaluate(), E.accumulate(), E.summarize()
    return max(float(E.stats[0]), 0.0) * 100


@pytest.mark.parametrize("seed,crowd", [(0, False), (1, True), (2, False)])
def test_ap_with_unit_weights_is_pycocotools_to_the_last_bit(seed, crowd):
    images, anns, cats, dets = _set(seed=seed, crowd=crowd)
    m = match_images(_coco(images, anns, cats), dets)
    assert ap(m) == _pycoco_ap(images, anns, cats, dets)


def test_integer_weights_are_the_set_with_images_repeated():
    images, anns, cats, dets = _set(n_img=25, seed=3)
    m = match_images(_coco(images, anns, cats), dets)
    w = np.random.default_rng(5).integers(0, 4, len(images))
    # the repeated set, each copy a new image id, in the same order as the originals
    imgs2, anns2, dets2, new_id = [], [], [], 0
    for img, k in zip(images, w):
        for _ in range(k):
            new_id += 1
            imgs2.append({**img, "id": img["id"] * 100 + _})
    order = {i["id"]: i for i in imgs2}
    for a in anns:
        for c in range(w[a["image_id"] - 1]):
            anns2.append({**a, "id": len(anns2) + 1, "image_id": a["image_id"] * 100 + c})
    for d in dets:
        for c in range(w[d["image_id"] - 1]):
            dets2.append({**d, "image_id": d["image_id"] * 100 + c})
    assert order and ap(m, w) == pytest.approx(_pycoco_ap(imgs2, anns2, cats, dets2), abs=1e-9)


def test_saved_and_loaded_matches_give_the_same_ap(tmp_path):
    images, anns, cats, dets = _set(seed=4)
    m = match_images(_coco(images, anns, cats), dets)
    m.save(tmp_path / "m.npz")
    m2 = ImageMatches.load(tmp_path / "m.npz")
    assert ap(m2) == ap(m)
    w = bootstrap_weights(len(images), 3, seed=0)[1]
    assert ap(m2, w) == ap(m, w)


def test_no_detections_is_zero_ap():
    images, anns, cats, _ = _set(seed=5)
    m = match_images(_coco(images, anns, cats), [])
    assert m.gt_count.sum() == len(anns) and ap(m) == 0.0


def test_paired_bootstrap_draws_the_same_images_for_both_runs():
    images, anns, cats, dets = _set(n_img=60, seed=6)
    gt = _coco(images, anns, cats)
    a = match_images(gt, dets)
    b = match_images(gt, [{**d, "score": d["score"] ** 2} for d in dets[::2]])
    boot = bootstrap_aps([a, a, b], n_boot=50, seed=1)
    assert boot.shape == (50, 3)
    assert np.array_equal(boot[:, 0], boot[:, 1])  # the same run on the same resamples
    assert boot[:, 0].std() > 0  # resampling moves AP
    W = bootstrap_weights(len(images), 50, seed=1)
    assert (W.sum(1) == len(images)).all()
    assert boot[7, 2] == ap(b, W[7])


def test_paired_difference_of_a_run_with_itself_is_exactly_zero_and_a_real_gap_is_seen():
    from gflnb.study.imagewise import paired_difference
    images, anns, cats, dets = _set(n_img=60, seed=7)
    gt = _coco(images, anns, cats)
    a = match_images(gt, dets)
    worse = match_images(gt, [{**d, "score": 1 - d["score"]} for d in dets])  # scores reversed: AP falls
    same = paired_difference([a, a], [a], n_boot=40)
    assert same == dict(diff=0.0, sd=0.0, lo=0.0, hi=0.0)  # paired: the shared images cancel to the bit
    gap = paired_difference([a], [worse], n_boot=200, seed=3)
    assert gap["diff"] == ap(a) - ap(worse) > 0 and gap["sd"] > 0 and gap["lo"] < gap["diff"] < gap["hi"]
