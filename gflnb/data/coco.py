"""COCO-format data through pycocotools, GFL_SPEC section 5 transforms, and resumable batching.

Labels are ``0..C-1`` in sorted category-id order (and mapped back for results). Crowd boxes,
boxes under 1 px and boxes outside their image are not used, as in mmdetection. All randomness
(flip, multi-scale size, batch order) is a function of ``(seed, epoch, index)``, so a resumed run
sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import GFLConfig
from .preprocess import load_image, preprocess, resize_keep_ratio


# COCO 2017's 80 detection classes in category-id order (mmdetection's CocoDataset.METAINFO), and their
# ids: what a model-zoo checkpoint's labels 0..79 mean, for files that carry no class list of their own.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")
COCO_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
                     31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
                     56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
                     85, 86, 87, 88, 89, 90)
assert len(COCO_CLASSES) == len(COCO_CATEGORY_IDS) == 80


def class_names_for(num_classes: int, meta: Optional[dict] = None) -> list[str]:
    """What labels ``0..C-1`` are called: a gflnb checkpoint's ``meta['classes']``, COCO's 80 for an
    80-class model (the model zoo's), else the label numbers."""
    names = (meta or {}).get("classes")
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return [str(n) for n in names]
    return list(COCO_CLASSES) if num_classes == len(COCO_CLASSES) else [str(i) for i in range(num_classes)]


def label_to_category(num_classes: int, meta: Optional[dict] = None) -> dict[int, int]:
    """The COCO ``category_id`` of each label, as :func:`class_names_for` names them (label itself when unknown)."""
    saved = (meta or {}).get("label2cat")
    if isinstance(saved, dict) and len(saved) == num_classes:
        return {int(k): int(v) for k, v in saved.items()}
    if num_classes == len(COCO_CATEGORY_IDS):
        return dict(enumerate(COCO_CATEGORY_IDS))
    return {i: i for i in range(num_classes)}


class DataError(ValueError):
    """Malformed annotations or unreadable images; the message names the file and the id."""


@dataclass
class Record:
    img_id: int
    path: str
    width: int
    height: int
    boxes: np.ndarray  # [G, 4] xyxy float32
    labels: np.ndarray  # [G] int64
    ann_ids: np.ndarray  # [G]


def _load_coco(ann_file: str | os.PathLike):
    from pycocotools.coco import COCO
    path = Path(ann_file)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"annotation file {path}: expected a JSON object with images, annotations, categories")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DataError(f"annotation file {path} lacks {', '.join(repr(m) for m in missing)}")
    img_ids = {im.get("id") for im in data["images"]}
    cat_ids = {c.get("id") for c in data["categories"]}
    for a in data["annotations"]:
        if a.get("image_id") not in img_ids:
            raise DataError(f"annotation file {path}: annotation {a.get('id')} refers to unknown image id "
                            f"{a.get('image_id')!r}")
        if a.get("category_id") not in cat_ids:
            raise DataError(f"annotation file {path}: annotation {a.get('id')} refers to unknown category id "
                            f"{a.get('category_id')!r}")
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DataError(f"annotation file {path}: annotation {a.get('id')} has a malformed bbox {bbox!r}")
        if not all(math.isfinite(v) for v in bbox):
            raise DataError(f"annotation file {path}: annotation {a.get('id')} has a non-finite bbox {bbox!r}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection set. ``train=True`` applies the training filters and augmentation."""

    def __init__(self, ann_file: str | os.PathLike, img_dir: str | os.PathLike, cfg: GFLConfig, train: bool = False):
        self.ann_file, self.img_dir, self.cfg, self.train = str(ann_file), Path(img_dir), cfg, train
        if not self.img_dir.is_dir():
            raise DataError(f"image folder not found: {self.img_dir}")
        self.coco = _load_coco(ann_file)
        self.cat_ids = sorted(self.coco.getCatIds())
        self.cat2label = {c: i for i, c in enumerate(self.cat_ids)}
        self.label2cat = {i: c for c, i in self.cat2label.items()}
        self.class_names = [self.coco.cats[c].get("name", str(c)) for c in self.cat_ids]
        self.epoch = 0
        self.num_skipped_boxes = 0
        self.num_clipped_boxes = 0
        self.records = self._parse()
        if not self.records:
            raise DataError(f"{ann_file}: no usable images" + (" (every image lacks boxes or is too small)"
                                                                if train else ""))

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def _parse(self) -> list[Record]:
        out = []
        for img_id in self.coco.getImgIds():
            info = self.coco.imgs[img_id]
            try:
                w, h = int(info["width"]), int(info["height"])
                fname = info["file_name"]
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{self.ann_file}: image {img_id} lacks width, height or file_name") from None
            boxes, labels, ids = [], [], []
            anns = self.coco.imgToAnns.get(img_id, [])
            for a in anns:
                if a.get("ignore", False) or a.get("iscrowd", 0):
                    continue
                x, y, bw, bh = a["bbox"]
                # mmdet: a box must overlap its image and be at least 1 px wide and high
                inter_w = max(0, min(x + bw, w) - max(x, 0))
                inter_h = max(0, min(y + bh, h) - max(y, 0))
                if inter_w * inter_h == 0 or a.get("area", bw * bh) <= 0 or bw < 1 or bh < 1:
                    self.num_skipped_boxes += 1
                    continue
                if x < 0 or y < 0 or x + bw > w or y + bh > h:
                    self.num_clipped_boxes += 1  # clipped to the image after resizing, as the reference does
                boxes.append([x, y, x + bw, y + bh])
                labels.append(self.cat2label[a["category_id"]])
                ids.append(a["id"])
            if self.train:
                has_cat = any(a["category_id"] in self.cat2label for a in anns)
                if (self.cfg.filter_empty_gt and not has_cat) or min(w, h) < self.cfg.min_size:
                    continue
            out.append(Record(img_id, str(self.img_dir / fname), w, h,
                              np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                              np.asarray(ids, np.int64)))
        if self.num_skipped_boxes:
            warnings.warn(f"{self.ann_file}: {self.num_skipped_boxes} boxes skipped (under 1 px or outside their image)")
        if self.num_clipped_boxes:
            warnings.warn(f"{self.ann_file}: {self.num_clipped_boxes} boxes extend past their image and are clipped")
        return out

    def __len__(self) -> int:
        return len(self.records)

    def check_images(self) -> None:
        """Raise ``DataError`` for the first image that is missing or has no readable image header.

        A cheap pass (a stat and a header read per file) so that bad data stops a run before any
        set-up, not in the middle of its first epoch.
        """
        import cv2
        for r in self.records:
            if not os.path.isfile(r.path):
                raise DataError(f"image {r.img_id}: image file not found: {r.path}")
            if not cv2.haveImageReader(r.path):
                raise DataError(f"image {r.img_id}: cannot decode image (corrupt or not an image): {r.path}")

    def aspect_groups(self) -> np.ndarray:
        """1 where an image is wider than high (mmdet groups by ``w < h``)."""
        return np.array([int(r.width >= r.height) for r in self.records], np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, self.epoch, index, 1234567])

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        try:
            img = load_image(r.path)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"image {r.img_id}: {e}") from None
        if img.shape[0] != r.height or img.shape[1] != r.width:
            warnings.warn(f"image {r.img_id} ({r.path}): file is {img.shape[1]}x{img.shape[0]}, "
                          f"annotations say {r.width}x{r.height}; using the file's size")
        boxes = r.boxes.copy()
        scale = self.cfg.img_scale
        rng = self._rng(index) if self.train else None
        if self.train and self.cfg.ms_short_range is not None:
            lo, hi = self.cfg.ms_short_range
            scale = (max(self.cfg.img_scale), int(rng.integers(lo, hi + 1)))
        ori_h, ori_w = img.shape[:2]
        img, (sx, sy) = resize_keep_ratio(img, scale)
        nh, nw = img.shape[:2]
        if len(boxes):
            boxes *= np.array([sx, sy, sx, sy], np.float32)
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, nw)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, nh)
        flip = bool(self.train and rng.uniform() < self.cfg.flip_prob)
        if flip:
            img = img[:, ::-1]
            if len(boxes):
                boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], 1)
        chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        meta = dict(img_id=r.img_id, ori_shape=(ori_h, ori_w), img_shape=(nh, nw), scale_factor=(sx, sy), flip=flip)
        return dict(img=chw, boxes=torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
                    labels=torch.from_numpy(r.labels.copy()), meta=meta)


class Collate:
    """Normalize and zero-pad a list of samples into ``(images, targets, metas)``."""

    def __init__(self, cfg: GFLConfig):
        self.mean, self.std, self.div = cfg.mean, cfg.std, cfg.size_divisor

    def __call__(self, samples: Sequence[dict]) -> tuple[Tensor, list[dict], list[dict]]:
        images, metas = preprocess([s["img"] for s in samples], self.mean, self.std, self.div,
                                   [s["meta"] for s in samples])
        return images, [dict(boxes=s["boxes"], labels=s["labels"]) for s in samples], metas


def epoch_batches(groups: np.ndarray, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  rank: int = 0, world: int = 1) -> list[list[int]]:
    """This process's batches of one epoch, grouped by aspect ratio (mmdet AspectRatioBatchSampler).

    The order is a function of (seed, epoch) only: a resumed run skips the batches it has done.
    With several processes the permutation is padded and strided as DistributedSampler does.
    """
    n = len(groups)
    if shuffle:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if world > 1:
        total = int(math.ceil(n / world)) * world
        order = (order + order[: total - n])[rank:total:world]
    buckets: dict[int, list[int]] = {0: [], 1: []}
    batches = []
    for i in order:
        b = buckets[int(groups[i])]
        b.append(i)
        if len(b) == batch_size:
            batches.append(list(b))
            b.clear()
    rest = buckets[0] + buckets[1]  # leftovers, as mmdet yields them at the end of an epoch
    batches += [rest[i:i + batch_size] for i in range(0, len(rest), batch_size)]
    return batches


def make_loader(ds: CocoDetection, batches: list[list[int]], num_workers: int = 0) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=num_workers, collate_fn=Collate(ds.cfg),
                                       persistent_workers=False, pin_memory=False)


def ann_stats(ann_file: str | os.PathLike) -> dict[str, Any]:
    """Categories and counts of an annotation file (what ``gflnb train`` reads num_classes from)."""
    coco = _load_coco(ann_file)
    return dict(num_classes=len(coco.getCatIds()), num_images=len(coco.getImgIds()),
                num_annotations=len(coco.getAnnIds()))
