"""COCO AP image by image: a run's detections reduced once to what AP needs, so that AP can be
recomputed on any reweighting of the images, e.g. a bootstrap resample, without pycocotools.

``ImageMatches`` keeps, for area "all" and 100 detections per image, what ``COCOeval.evaluate``
decides per (image, category): each kept detection's score and, at each of the 10 IoU thresholds,
whether it matched a ground truth or is ignored, plus the number of ground truths that count.
``ap`` then follows ``COCOeval.accumulate`` step by step with a weight per image: with every weight
1 it is pycocotools' AP to the last bit, and with integer weights it is the AP of the set in which
each image appears that many times (up to the order of detections whose scores tie).

A paired bootstrap (Jordan, ICLR 2024; Efron & Tibshirani 1993, ch. 6) draws the same images for
every run it compares, so the AP difference of two models is measured on the same resample.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..files import atomic_path

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCOeval's iouThrs
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # COCOeval's recThrs


@dataclass
class ImageMatches:
    """One run's detections on one set, matched as COCOeval matches them (area all, 100 per image).

    Detections are held per category, each with the index of its image in ``img_ids``."""
    img_ids: np.ndarray  # [I] image ids, sorted (COCOeval's order)
    cat_ids: np.ndarray  # [K] category ids
    det_cat: np.ndarray  # [D] index into cat_ids
    det_img: np.ndarray  # [D] index into img_ids
    det_score: np.ndarray  # [D] float64 scores, as COCOeval read them
    det_match: np.ndarray  # [D, T] bool: matched a ground truth at threshold t
    det_ignore: np.ndarray  # [D, T] bool: ignored at threshold t (matched a crowd or ignored gt)
    gt_count: np.ndarray  # [I, K] ground truths that count (not ignored) per image and category

    def save(self, path: str | Path) -> None:
        with atomic_path(path, suffix=".tmp.npz") as tmp:  # savez would add .npz to any other name
            np.savez_compressed(tmp, img_ids=self.img_ids, cat_ids=self.cat_ids,
                                det_cat=self.det_cat.astype(np.int16), det_img=self.det_img.astype(np.int32),
                                det_score=self.det_score, det_match=np.packbits(self.det_match, axis=1),
                                det_ignore=np.packbits(self.det_ignore, axis=1),
                                gt_count=self.gt_count.astype(np.int32))

    @classmethod
    def load(cls, path: str | Path) -> "ImageMatches":
        z = np.load(path)
        t = len(IOU_THRESHOLDS)
        return cls(z["img_ids"], z["cat_ids"], z["det_cat"].astype(np.int64), z["det_img"].astype(np.int64),
                   z["det_score"], np.unpackbits(z["det_match"], axis=1, count=t).astype(bool),
                   np.unpackbits(z["det_ignore"], axis=1, count=t).astype(bool), z["gt_count"].astype(np.int64))


def match_images(coco_gt, results: Sequence[Mapping], img_ids: Optional[Sequence[int]] = None) -> ImageMatches:
    """``results`` (COCO detections) matched against ``coco_gt`` (a ``pycocotools.coco.COCO``) by
    ``COCOeval.evaluate``: the one place where pycocotools decides what matches."""
    from pycocotools.cocoeval import COCOeval
    img_ids = np.asarray(sorted(img_ids if img_ids is not None else coco_gt.getImgIds()), dtype=np.int64)
    cat_ids = np.asarray(sorted(coco_gt.getCatIds()), dtype=np.int64)
    t = len(IOU_THRESHOLDS)
    det_cat, det_img, det_score, det_match, det_ignore = [], [], [], [], []
    gt_count = np.zeros((len(img_ids), len(cat_ids)), dtype=np.int64)
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            E = COCOeval(coco_gt, coco_gt.loadRes(list(results)), "bbox")
            E.params.imgIds = [int(i) for i in img_ids]
            E.evaluate()
        p = E.params
        n_area, n_img = len(p.areaRng), len(p.imgIds)
        for k in range(len(p.catIds)):
            for i in range(n_img):
                e = E.evalImgs[k * n_area * n_img + i]  # area index 0: "all"
                if e is None:
                    continue
                ki = int(np.searchsorted(cat_ids, p.catIds[k]))
                gt_count[i, ki] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
                m = p.maxDets[-1]
                scores = np.asarray(e["dtScores"][:m], dtype=np.float64)
                det_cat.append(np.full(len(scores), ki))
                det_img.append(np.full(len(scores), i))
                det_score.append(scores)
                det_match.append(np.asarray(e["dtMatches"])[:, :m].T > 0)
                det_ignore.append(np.asarray(e["dtIgnore"])[:, :m].T.astype(bool))
    else:  # no detections: only the ground truths count
        for ki, c in enumerate(cat_ids):
            for i, img in enumerate(img_ids):
                anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[int(img)], catIds=[int(c)], iscrowd=None))
                gt_count[i, ki] = sum(1 for a in anns if not a.get("iscrowd", 0) and not a.get("ignore", 0))
    cat = lambda xs, dt, shape: np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dtype=dt)  # noqa: E731
    return ImageMatches(img_ids, cat_ids, cat(det_cat, np.int64, (0,)), cat(det_img, np.int64, (0,)),
                        cat(det_score, np.float64, (0,)), cat(det_match, bool, (0, t)), cat(det_ignore, bool, (0, t)),
                        gt_count)


def _category_orders(m: ImageMatches) -> list[np.ndarray]:
    """Per category, its detections' indices in COCOeval's order: images in ``img_ids`` order,
    each image's detections by score, then all of them by score with a stable sort."""
    out = []
    for k in range(len(m.cat_ids)):
        idx = np.flatnonzero(m.det_cat == k)  # already in image order, each image's by score
        out.append(idx[np.argsort(-m.det_score[idx], kind="mergesort")])
    return out


def ap(m: ImageMatches, weights: Optional[np.ndarray] = None, orders: Optional[list[np.ndarray]] = None) -> float:
    """COCO AP in percent (IoU 0.50:0.95, area all, 100 detections) with ``weights[i]`` copies of
    image i (default 1 each), as ``COCOeval.accumulate`` computes it."""
    w = np.ones(len(m.img_ids)) if weights is None else np.asarray(weights, dtype=np.float64)
    orders = orders if orders is not None else _category_orders(m)
    npig_all = w @ m.gt_count  # [K]
    eps = np.spacing(1)
    T, R = m.det_match.shape[1], len(RECALL_THRESHOLDS)
    precision = -np.ones((T, R, len(orders)))  # COCOeval's [T, R, K] at area all, 100 detections
    for k, idx in enumerate(orders):
        npig = npig_all[k]
        if npig == 0:
            continue  # COCOeval leaves precision at -1 and the mean skips it
        dw = w[m.det_img[idx]]
        keep = dw > 0
        idx, dw = idx[keep], dw[keep]
        match, ignore = m.det_match[idx], m.det_ignore[idx]  # [D, T]
        tp = np.cumsum((match & ~ignore) * dw[:, None], axis=0)  # [D, T]
        fp = np.cumsum((~match & ~ignore) * dw[:, None], axis=0)
        if not len(idx):
            precision[:, :, k] = 0.0
            continue
        rc = tp / npig
        pr = tp / (fp + tp + eps)
        pr = np.maximum.accumulate(pr[::-1], axis=0)[::-1]  # the precision envelope, per threshold
        for t in range(T):
            q = np.zeros(R)
            pos = np.searchsorted(rc[:, t], RECALL_THRESHOLDS, side="left")
            ok = pos < len(idx)
            q[ok] = pr[pos[ok], t]
            precision[t, :, k] = q
    valid = precision[precision > -1]
    return max(float(np.mean(valid)), 0.0) * 100 if valid.size else 0.0


def bootstrap_weights(n_images: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_images]`` image counts of ``n_boot`` resamples with replacement (the paired
    bootstrap uses one draw for every run it compares)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_boot).astype(np.float64)


def aps_on(m: ImageMatches, weights: np.ndarray) -> np.ndarray:
    """``[B]`` APs of one run, one for each row of ``weights [B, I]`` (e.g. a bootstrap's resamples)."""
    orders = _category_orders(m)
    return np.array([ap(m, w, orders) for w in np.atleast_2d(weights)])


def bootstrap_aps(runs: Sequence[ImageMatches], n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, len(runs)]`` APs of every run on the same ``n_boot`` resamples of the images."""
    if not runs:
        return np.zeros((n_boot, 0))
    ref = runs[0].img_ids
    for r in runs[1:]:
        if not np.array_equal(r.img_ids, ref) or not np.array_equal(r.cat_ids, runs[0].cat_ids):
            raise ValueError("a paired bootstrap needs every run evaluated on the same images and categories")
    W = bootstrap_weights(len(ref), n_boot, seed)
    return np.stack([aps_on(r, W) for r in runs], axis=1)


def sampling_sd(run: ImageMatches, n_boot: int = 1000, seed: int = 0) -> float:
    """The sd of one run's AP over resamples of the images: the test set's part of its spread."""
    return float(bootstrap_aps([run], n_boot, seed)[:, 0].std(ddof=1))


def paired_difference(better: Sequence[ImageMatches], worse: Sequence[ImageMatches], n_boot: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> dict[str, float]:
    """The evaluation part of a claim: how the difference of the two variants' mean AP moves when
    only the test images are resampled, the same images for every run of both (the models fixed).
    ``dict(diff, sd, lo, hi)``: the difference on the set itself, the bootstrap sd and the
    percentile interval at ``confidence``."""
    runs = list(better) + list(worse)
    boot = bootstrap_aps(runs, n_boot, seed)  # [B, runs]
    d = boot[:, :len(better)].mean(1) - boot[:, len(better):].mean(1)
    full = np.mean([ap(r) for r in better]) - np.mean([ap(r) for r in worse])
    tail = (1 - confidence) / 2 * 100
    return dict(diff=float(full), sd=float(d.std(ddof=1)), lo=float(np.percentile(d, tail)),
                hi=float(np.percentile(d, 100 - tail)))
