"""A second COCO-format detection set, written independently of ``gflnb synth``.

The CPU demo preset was tuned on gflnb's own synthetic shapes; this set checks that it also
learns on data it did not generate. Everything a COCO reader can trip over differs from
``gflnb synth``: glyphs (letters, digits, symbols drawn with OpenCV's Hershey fonts) instead of
shapes, five classes with category ids 1, 2, 5, 17 and 90, images of 200-480 px in both
orientations saved as PNG, image ids that start at 1000 and skip numbers, and a few crowd
regions (which training and COCOeval must ignore).

    python benchmarks/glyphs.py data/glyphs --num-train 1000 --num-val 200 --seed 1
    gflnb train --config gfl_cpu_demo --train-ann data/glyphs/annotations/instances_train.json \
        --train-images data/glyphs/train --val-ann data/glyphs/annotations/instances_val.json \
        --val-images data/glyphs/val --work-dir runs/glyphs --max-minutes 5
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

CATEGORIES = [(1, "A"), (2, "K"), (5, "7"), (17, "%"), (90, "@")]
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
         cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN)


def _glyph_mask(rng: np.random.Generator, text: str, h: int, w: int, height: int, x0: int, y0: int):
    """A binary mask of one glyph about ``height`` px tall, top-left near (x0, y0)."""
    font = FONTS[int(rng.integers(len(FONTS)))]
    scale = 1.0
    (tw, th), base = cv2.getTextSize(text, font, scale, 1)
    scale = height / max(th + base, 1)
    thickness = max(1, int(round(scale * rng.uniform(1.0, 3.0))))
    m = np.zeros((h, w), np.uint8)
    cv2.putText(m, text, (x0, y0 + height), font, scale, 1, thickness, cv2.LINE_AA)
    return m


def _image(rng: np.random.Generator, n_max: int):
    portrait = rng.random() < 0.3
    long_side, short_side = int(rng.integers(320, 481)), int(rng.integers(200, 320))
    h, w = (long_side, short_side) if portrait else (short_side, long_side)
    # background: a two-colour gradient, noise and a few unannotated strokes
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    img = np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3)).astype(np.float32).copy()
    img += rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    for _ in range(int(rng.integers(0, 6))):
        p = rng.integers(0, [w, h, w, h])
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), tuple(float(v) for v in rng.uniform(0, 255, 3)),
                 int(rng.integers(1, 4)), cv2.LINE_AA)
    anns = []
    for _ in range(int(rng.integers(1, n_max + 1))):
        cat, text = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        height = int(rng.integers(16, max(17, min(200, h - 10))))
        x0, y0 = int(rng.integers(0, max(1, w - height))), int(rng.integers(0, max(1, h - height - 5)))
        m = _glyph_mask(rng, text, h, w, height, x0, y0)
        ys, xs = np.nonzero(m)
        if len(xs) < 20:
            continue
        color = rng.uniform(0, 255, 3).astype(np.float32)
        a = m.astype(np.float32)[..., None]
        img = img * (1 - a) + color * a
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        anns.append(dict(category_id=cat, bbox=[float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                         area=float(m.sum()), iscrowd=0))
    if rng.random() < 0.05:  # a crowd region: a cluster of small, unannotated glyphs
        cw, ch = int(rng.integers(40, 90)), int(rng.integers(30, 60))
        cx, cy = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
        cat, text = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        for _ in range(6):
            m = _glyph_mask(rng, text, h, w, 10, cx + int(rng.integers(0, cw - 10)), cy + int(rng.integers(0, ch - 12)))
            img = img * (1 - m[..., None]) + rng.uniform(0, 255, 3) * m[..., None]
        anns.append(dict(category_id=cat, bbox=[float(cx), float(cy), float(cw), float(ch)], area=float(cw * ch),
                         iscrowd=1))
    return np.clip(img, 0, 255).astype(np.uint8), anns


def write_split(out: Path, split: str, n: int, rng: np.random.Generator, first_id: int) -> None:
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    img_id = first_id
    for i in range(n):
        img, anns = _image(rng, 5)
        name = f"glyph_{img_id:07d}.png"
        cv2.imwrite(str(out / split / name), img)
        images.append(dict(id=img_id, file_name=name, height=img.shape[0], width=img.shape[1]))
        for a in anns:
            annotations.append(dict(a, id=len(annotations) + 1, image_id=img_id))
        img_id += int(rng.integers(1, 4))  # ids with gaps, as in COCO
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=c, name=n, supercategory="glyph") for c, n in CATEGORIES])
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--num-train", type=int, default=1000)
    ap.add_argument("--num-val", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    write_split(a.out, "train", a.num_train, rng, 1000)
    write_split(a.out, "val", a.num_val, rng, 900000)
    print(f"wrote {a.num_train} + {a.num_val} images to {a.out}")


if __name__ == "__main__":
    main()
