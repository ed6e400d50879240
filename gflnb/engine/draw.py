"""Detections drawn onto an image with OpenCV (``gflnb predict``'s pictures and videos; no matplotlib).

Each box in its class's colour with ``name score`` above it and, per side, an error bar across the
edge: ``edge +- std_px``, the spread of that side's learned distribution (a wide bar: an edge the
model is unsure of).
"""
from __future__ import annotations

import numpy as np

# seaborn's "colorblind" palette (the notebooks' colours, gflnb.chapters.gallery.PALETTE), in BGR
COLORS_BGR = ((178, 115, 1), (5, 143, 222), (115, 158, 2), (0, 94, 213), (188, 120, 204), (145, 145, 202),
              (228, 175, 251), (148, 148, 148), (51, 225, 236), (233, 180, 86))
MIN_SIDE = 640  # px: smaller images are drawn enlarged, so that names and bars stay legible


def draw_detections(img_bgr: np.ndarray, det, bars: bool = True, min_side: int = MIN_SIDE) -> np.ndarray:
    """A copy of ``img_bgr`` ``[H, W, 3]`` (enlarged so its long side is at least ``min_side``) with the
    :class:`gflnb.engine.predict.Detections` ``det`` drawn; the highest score is drawn last (on top)."""
    import cv2
    h, w = img_bgr.shape[:2]
    f = max(1.0, min_side / max(h, w))
    canvas = cv2.resize(img_bgr, (int(round(w * f)), int(round(h * f))), interpolation=cv2.INTER_LINEAR) \
        if f > 1 else img_bgr.copy()
    th = max(1, int(round(max(canvas.shape[:2]) / 500)))  # line width grows with the picture
    font = 0.4 + 0.1 * th
    for k in reversed(range(len(det))):
        col = COLORS_BGR[int(det.labels[k]) % len(COLORS_BGR)]
        x1, y1, x2, y2 = (float(v) * f for v in det.boxes[k])
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(canvas, p1, p2, col, th, cv2.LINE_AA)
        if bars and det.std_px is not None:
            _bars(canvas, (x1, y1, x2, y2), det.std_px[k] * f, col, th)
        text = f"{det.names[k]} {float(det.scores[k]):.2f}"
        (tw, tht), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        top = p1[1] - tht - base - 2 if p1[1] - tht - base - 2 >= 0 else p1[1]  # inside the box at the top edge
        cv2.rectangle(canvas, (p1[0], top), (p1[0] + tw + 4, top + tht + base + 2), col, -1)
        cv2.putText(canvas, text, (p1[0] + 2, top + tht + 1), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas


def _bars(canvas: np.ndarray, box, std: np.ndarray, col, th: int) -> None:
    """Per side an error bar across the edge at its middle: from ``edge - std`` to ``edge + std``, capped."""
    import cv2
    x1, y1, x2, y2 = box
    xm, ym = (x1 + x2) / 2, (y1 + y2) / 2
    cap = 3 * th + 2
    # (edge position, fixed coordinate, horizontal?) for left, top, right, bottom
    for (edge, mid, horizontal), s in zip(((x1, ym, True), (y1, xm, False), (x2, ym, True), (y2, xm, False)), std):
        lo, hi = edge - float(s), edge + float(s)
        if horizontal:  # a vertical edge is uncertain along x
            a, b = (int(round(lo)), int(round(mid))), (int(round(hi)), int(round(mid)))
            caps = [((a[0], a[1] - cap), (a[0], a[1] + cap)), ((b[0], b[1] - cap), (b[0], b[1] + cap))]
        else:
            a, b = (int(round(mid)), int(round(lo))), (int(round(mid)), int(round(hi)))
            caps = [((a[0] - cap, a[1]), (a[0] + cap, a[1])), ((b[0] - cap, b[1]), (b[0] + cap, b[1]))]
        for color, width in (((0, 0, 0), th + 2), (col, th)):  # a dark outline keeps it visible on any background
            cv2.line(canvas, a, b, color, width, cv2.LINE_AA)
            for c0, c1 in caps:
                cv2.line(canvas, c0, c1, color, width, cv2.LINE_AA)
