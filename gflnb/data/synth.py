"""A synthetic detection set in COCO's layout, with controlled boundary ambiguity.

Textured shapes of four classes on cluttered backgrounds, 12 px to most of the image, with
overlaps. Each object edge (left, top, right, bottom) is made deliberately clear or unclear:

* **sharp**: the shape's edge is crisp;
* **blurred**: the edge fades over a known Gaussian radius ``sigma`` px (a one-sided blur: only
  that side of the object is softened);
* **occluded**: something drawn later covers part of that edge.

Every annotation records, per side, ``edge_blur`` (sigma in px), ``edge_occlusion`` (fraction of
the edge hidden) and ``edge_ambiguity`` in [0, 1] (the larger of the blur, against the largest
sigma the version draws, and the occluded fraction). pycocotools ignores these extra fields; the
notebooks use them to test the paper's claim that DFL learns flat distributions on ambiguous edges
and sharp ones on clear edges.

Two generator versions (``VERSIONS``). Version 1: sigma 1.5-6 px whatever the object's size, and
occlusion only where objects happen to overlap; against bins of 8-32 px that is a fraction of a bin
on most levels. Version 2 (the book's): sigma and deliberate occluders (unannotated blobs straddling
an edge) grow with the object, so that an unclear edge is unclear by about the same number of bins
on every FPN level. Version 1 is kept bit for bit: the ablation sweep's records were made on it.

Everything is a function of (version, counts, seed), so a set can be regenerated bit for bit.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

CLASSES = ("ellipse", "rectangle", "triangle", "cross")
# Category ids deliberately not 0..C-1, so the label <-> id mapping is exercised as on COCO.
CATEGORY_IDS = (3, 7, 11, 20)
MAX_BLUR = 6.0  # px; the largest per-side blur sigma
IMG_SIDE = (256, 320)
OBJ_SIDE = (12, 240)
# A side counts as occluded when this fraction of its boundary strip is covered.
OCCLUSION_MIN = 0.2
# Generator versions. A set is a function of (version, counts, seed); experiments name their version.
VERSIONS = {1: "blur sigma 1.5-6 px on any object; occlusion only where objects happen to overlap",
            2: "blur sigma and occluders scaled with the object's size, so that an unclear edge spans "
               "several of its level's bins"}
LATEST_VERSION = max(VERSIONS)  # what chapter 3 (data_version) and `gflnb synth` make by default
# Version 2. The demo's ATSS anchors are 4 strides wide, so an object of side s = sqrt(w h) trains
# at a stride of about s / 4: a sigma of 0.25 s is about one bin, and a blurred edge (+-2 sigma) spans
# four. Version 1's sigmas (<= 6 px) are a fraction of a bin on every level but the first.
BLUR_REL = (0.05, 0.25)  # per-side blur sigma, as a fraction of s
# Per side. Version 1's 0.35 left 18% of objects with four unblurred sides; with version 2's wider
# blur and its occluders that made 7% of objects clear (AP 19.1 after 12 epochs), too few to compare
# clear edges against unclear ones.
BLUR_PROB_V2 = 0.2
OCCLUDER_PROB = 0.15  # per side: an unannotated blob straddles that edge
OCCLUDER_LENGTH = (0.4, 1.0)  # the share of the edge's length it covers
OCCLUDER_DEPTH = (0.1, 0.3)  # how far it reaches to each side of the edge, as a fraction of s


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour field plus unannotated clutter (lines, small blobs)."""
    coarse = rng.uniform(40, 215, size=(rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 8, size=(h, w, 3)).astype(np.float32)
    for _ in range(rng.integers(3, 12)):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p1, p2, color, int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 8)):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 5)), color, -1)
    return img


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A coloured fill: flat, stripes, checker or noise."""
    base = rng.uniform(0, 255, 3).astype(np.float32)
    other = rng.uniform(0, 255, 3).astype(np.float32)
    kind = rng.integers(0, 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        t = np.zeros((h, w), np.float32)
    elif kind == 1:
        period, ang = rng.uniform(4, 14), rng.uniform(0, math.pi)
        t = (np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period) > 0).astype(np.float32)
    elif kind == 2:
        cell = int(rng.integers(3, 10))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    else:
        t = cv2.GaussianBlur(rng.uniform(0, 1, (h, w)).astype(np.float32), (0, 0), 1.5)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return base[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]


def _shape_mask(cls: int, h: int, w: int, x0: int, y0: int, bw: int, bh: int, rng) -> np.ndarray:
    """A binary mask of one shape whose tight box is exactly [x0, y0, x0+bw, y0+bh)."""
    m = np.zeros((h, w), np.uint8)
    x1, y1 = x0 + bw - 1, y0 + bh - 1
    if cls == 0:
        cv2.ellipse(m, (((x0 + x1) / 2, (y0 + y1) / 2), (float(bw), float(bh)), 0.0), 1, -1)
    elif cls == 1:
        m[y0:y1 + 1, x0:x1 + 1] = 1
    elif cls == 2:
        apex = x0 + int(rng.integers(0, bw))
        pts = np.array([[apex, y0], [x0, y1], [x1, y1]], np.int32)
        cv2.fillPoly(m, [pts], 1)
    else:
        tw, th = max(2, bw // 3), max(2, bh // 3)
        cx, cy = x0 + (bw - tw) // 2, y0 + (bh - th) // 2
        m[y0:y1 + 1, cx:cx + tw] = 1
        m[cy:cy + th, x0:x1 + 1] = 1
    return m


def _one_sided_blur(alpha: np.ndarray, sig: list[float], cx: float, cy: float) -> np.ndarray:
    """Blur the left/right halves horizontally and top/bottom halves vertically by their sigmas."""
    h, w = alpha.shape
    out = alpha
    xs = np.arange(w)[None, :]
    ys = np.arange(h)[:, None]
    for (s_a, s_b), axis in (((sig[0], sig[2]), 1), ((sig[1], sig[3]), 0)):
        blurred = []
        for s in (s_a, s_b):
            if s <= 0:
                blurred.append(out)
                continue
            k = int(2 * math.ceil(3 * s) + 1)
            ks = (k, 1) if axis == 1 else (1, k)
            blurred.append(cv2.GaussianBlur(out, ks, sigmaX=s if axis == 1 else 0, sigmaY=s if axis == 0 else 0))
        first = (xs < cx) if axis == 1 else (ys < cy)
        out = np.where(first, blurred[0], blurred[1])
    return out


def _check_version(version: int) -> None:
    if version not in VERSIONS:
        raise ValueError(f"synthetic set version {version!r} does not exist; versions: "
                         + "; ".join(f"{k}: {v}" for k, v in VERSIONS.items()))


def render_image(rng: np.random.Generator, blur_prob: float = 0.35, version: int = 1) -> tuple[np.ndarray, list[dict]]:
    """One image (BGR uint8) and its objects (box xyxy in px, class, per-side ambiguity); ``blur_prob``
    is version 1's per-side blur probability (version 2: ``BLUR_PROB_V2``)."""
    _check_version(version)
    h, w = (int(v) for v in rng.integers(IMG_SIDE[0], IMG_SIDE[1] + 1, size=2))
    img = _background(rng, h, w)
    n = int(rng.integers(1, 7))
    objs, masks = [], []
    for _ in range(n):
        # log-uniform sizes: many small objects, some large ones
        side = math.exp(rng.uniform(math.log(OBJ_SIDE[0]), math.log(min(OBJ_SIDE[1], 0.85 * min(h, w)))))
        ar = math.exp(rng.uniform(-0.5, 0.5))
        bw, bh = max(12, int(side * ar)), max(12, int(side / ar))
        bw, bh = min(bw, w - 2), min(bh, h - 2)
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        cls = int(rng.integers(0, len(CLASSES)))
        mask = _shape_mask(cls, h, w, x0, y0, bw, bh, rng)
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        if version == 1:
            sig = [float(rng.uniform(1.5, MAX_BLUR)) if rng.uniform() < blur_prob else 0.0 for _ in range(4)]
        else:
            s = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
            sig = [float(rng.uniform(*BLUR_REL) * s) if rng.uniform() < BLUR_PROB_V2 else 0.0 for _ in range(4)]
        alpha = _one_sided_blur(mask.astype(np.float32), sig, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        tex = _texture(rng, h, w)
        img = img * (1 - alpha[..., None]) + tex * alpha[..., None]
        objs.append(dict(cls=cls, box=box, blur=sig))
        masks.append(mask)
    if version >= 2:
        img, occluders = _occluders(rng, img, objs)
        masks += occluders  # drawn last: they hide the edges of every object beneath them
    # occlusion: the fraction of each side's boundary strip covered by objects drawn later
    for i, o in enumerate(objs):
        later = np.zeros_like(masks[i])  # objects drawn after this one, and the occluders
        for m in masks[i + 1:]:
            later |= m
        x0, y0, x1, y1 = (int(v) for v in o["box"])
        mask = masks[i]
        strips = []
        band = max(1, min(x1 - x0, y1 - y0) // 6)
        for sl in ((slice(y0, y1), slice(x0, x0 + band)), (slice(y0, y0 + band), slice(x0, x1)),
                   (slice(y0, y1), slice(x1 - band, x1)), (slice(y1 - band, y1), slice(x0, x1))):
            edge = mask[sl].astype(bool)
            covered = (edge & later[sl].astype(bool)).sum()
            strips.append(float(covered / max(edge.sum(), 1)))
        o["occlusion"] = strips
        o["visible"] = float((mask.astype(bool) & ~later.astype(bool)).sum() / max(mask.sum(), 1))
        o["area"] = float(mask.sum())
    img = np.clip(img + rng.normal(0, 3, size=img.shape), 0, 255).astype(np.uint8)
    return img, objs


def _blob(rng: np.random.Generator, h: int, w: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """An irregular mask (a union of discs) filling most of the box [x0, x1] x [y0, y1]: a shape
    no class has, so that an occluder is never mistaken for an unannotated object."""
    m = np.zeros((h, w), np.uint8)
    bw, bh = max(x1 - x0, 2.0), max(y1 - y0, 2.0)
    r = 0.5 * min(bw, bh)
    # discs along the long axis, each jittered, cover the box with a lumpy outline
    n = max(2, int(math.ceil(max(bw, bh) / max(r, 1.0))) + 1)
    for t in np.linspace(0, 1, n):
        cx = x0 + (t * bw if bw >= bh else bw / 2) + rng.uniform(-0.15, 0.15) * r
        cy = y0 + (t * bh if bh > bw else bh / 2) + rng.uniform(-0.15, 0.15) * r
        cv2.circle(m, (int(round(cx)), int(round(cy))), max(1, int(round(r * rng.uniform(0.85, 1.1)))), 1, -1)
    m[:, : max(int(x0), 0)] = 0
    m[:, int(math.ceil(x1)) + 1:] = 0
    m[: max(int(y0), 0)] = 0
    m[int(math.ceil(y1)) + 1:] = 0
    return m


def _occluders(rng: np.random.Generator, img: np.ndarray, objs: list[dict]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Version 2: per side, with OCCLUDER_PROB, a textured blob straddling that edge, sized with the
    object. Returns the image and the blobs' masks."""
    h, w = img.shape[:2]
    masks = []
    for o in objs:
        x0, y0, x1, y1 = o["box"]
        s = math.sqrt((x1 - x0) * (y1 - y0))
        for side in range(4):
            if rng.uniform() >= OCCLUDER_PROB:
                continue
            frac, depth = rng.uniform(*OCCLUDER_LENGTH), rng.uniform(*OCCLUDER_DEPTH) * s
            if side in (0, 2):  # a vertical edge: the blob spans part of its height
                length = frac * (y1 - y0)
                a = y0 + rng.uniform(0, (y1 - y0) - length)
                e = x0 if side == 0 else x1
                box = (e - depth, a, e + depth, a + length)
            else:
                length = frac * (x1 - x0)
                a = x0 + rng.uniform(0, (x1 - x0) - length)
                e = y0 if side == 1 else y1
                box = (a, e - depth, a + length, e + depth)
            m = _blob(rng, h, w, *box)
            alpha = m.astype(np.float32)[..., None]
            img = img * (1 - alpha) + _texture(rng, h, w) * alpha
            masks.append(m)
    return img, masks


def ambiguity(blur: list[float], occlusion: list[float], box: Optional[list[float]] = None,
              version: int = 1) -> list[float]:
    """Per side in [0, 1]: the larger of the blur (version 1: sigma / MAX_BLUR; version 2: sigma
    against the largest relative sigma, BLUR_REL[1] s) and the occluded fraction (when at least
    OCCLUSION_MIN)."""
    ref = MAX_BLUR if version == 1 else BLUR_REL[1] * math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
    return [round(max(min(b / ref, 1.0), o if o >= OCCLUSION_MIN else 0.0), 4) for b, o in zip(blur, occlusion)]


def write_split(out: Path, split: str, num: int, seed: int, progress: bool = True, version: int = 1) -> Path:
    from tqdm import tqdm
    img_dir = out / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    ss = np.random.SeedSequence([seed, {"train": 0, "val": 1}.get(split, 2)])
    for i, child in enumerate(tqdm(ss.spawn(num), desc=f"synth {split}", disable=not progress, unit="img")):
        rng = np.random.default_rng(child)
        img, objs = render_image(rng, version=version)
        name = f"{split}_{i:06d}.jpg"
        cv2.imwrite(str(img_dir / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=i + 1, file_name=name, height=int(img.shape[0]), width=int(img.shape[1])))
        for o in objs:
            if o["visible"] < 0.25:  # an object mostly hidden is not annotated, as a person would not
                continue
            x0, y0, x1, y1 = o["box"]
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=CATEGORY_IDS[o["cls"]],
                             bbox=[x0, y0, x1 - x0, y1 - y0], area=o["area"], iscrowd=0,
                             edge_blur=[round(b, 3) for b in o["blur"]],
                             edge_occlusion=[round(v, 3) for v in o["occlusion"]],
                             edge_ambiguity=ambiguity(o["blur"], o["occlusion"], o["box"], version)))
    cats = [dict(id=c, name=n, supercategory="shape") for c, n in zip(CATEGORY_IDS, CLASSES)]
    ann_dir = out / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    path = ann_dir / f"instances_{split}.json"
    info = dict(description="gflnb synthetic shapes with controlled boundary ambiguity", seed=seed, version=version,
                **(dict(max_blur=MAX_BLUR) if version == 1 else dict(blur_rel=BLUR_REL, occluder_prob=OCCLUDER_PROB)))
    path.write_text(json.dumps(dict(info=info, images=images, annotations=anns, categories=cats)))
    return path


def make_dataset(out: str | Path, num_train: int = 1000, num_val: int = 200, seed: int = 0,
                 progress: bool = True, version: int = 1) -> dict[str, Path]:
    """Write ``out/{train,val}/`` images and ``out/annotations/instances_{train,val}.json``."""
    _check_version(version)
    out = Path(out)
    paths = {}
    for split, n in (("train", num_train), ("val", num_val)):
        if n > 0:
            paths[split] = write_split(out, split, n, seed, progress, version)
    return paths


def dataset_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(annotation file, image dir)`` of a split written by :func:`make_dataset`."""
    root = Path(root)
    return root / "annotations" / f"instances_{split}.json", root / split


def ensure_dataset(root: str | Path, num_train: int, num_val: int, seed: int = 0,
                   progress: bool = True, version: int = 1) -> Optional[Path]:
    """Generate the set unless an identical one (same version, counts and seed) is already there."""
    _check_version(version)
    root = Path(root)
    stamp = root / "annotations" / "synth.json"
    want = dict(num_train=num_train, num_val=num_val, seed=seed, version=version)
    if stamp.exists() and {"version": 1, **json.loads(stamp.read_text())} == want:  # stamps before versions: 1
        return root
    make_dataset(root, num_train, num_val, seed, progress, version)
    stamp.write_text(json.dumps(want))
    return root


def synth_root(version: int = LATEST_VERSION, data_root: Optional[str] = None) -> str:
    """Where chapter 3 keeps the synthetic set of generator ``version`` (relative to ``notebooks/``):
    its ``data_root`` where that is set, else ``../data/synth_v{version}``. The sweep's set-up, its
    dry run and its Fig. 2 pass, and gflnb.numerics.optrace, read the same folder."""
    return data_root or f"../data/synth_v{version}"


TEST_SEED = 7  # chapter 3's default test_seed: images neither its training nor its validation set shows


def test_set_root(version: int, num: int, seed: int) -> str:
    """Where chapter 3 keeps a held-out test set of ``num`` images drawn with ``seed`` (relative to
    ``notebooks/``, like its ``data_root``): a set of its own, never the training set's val split, so
    that its images are new whatever seed the training set used. Its images are its ``val`` split."""
    return f"../data/synth_v{version}_test{num}_s{seed}"


def ensure_test_set(version: int, num: int, seed: int = TEST_SEED, base: str | Path = ".",
                    progress: bool = False) -> tuple[Path, Path]:
    """Generate (once) the held-out test set at :func:`test_set_root`, read from folder ``base``
    (chapter 3's ``notebooks/``); returns its ``(annotation file, image dir)``."""
    root = Path(base) / test_set_root(version, num, seed)
    ensure_dataset(root, 0, num, seed=seed, progress=progress, version=version)
    return dataset_paths(root, "val")
