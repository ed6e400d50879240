"""Image preprocessing with the reference's arithmetic: keep-ratio resize, normalize, pad.

Images are decoded by OpenCV in BGR order (as mmdet's loader does); ``normalize`` turns them
into RGB before subtracting the RGB mean, and padding with zeros happens after normalisation.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor


def rescale_size(w: int, h: int, scale: Sequence[int]) -> tuple[tuple[int, int], float]:
    """mmcv ``rescale_size``: the (new_w, new_h) that fits ``scale`` (long cap, short cap) and the factor."""
    long_cap, short_cap = max(scale), min(scale)
    f = min(long_cap / max(h, w), short_cap / min(h, w))
    return (int(w * float(f) + 0.5), int(h * float(f) + 0.5)), f


def resize_keep_ratio(img: np.ndarray, scale: Sequence[int]) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize an ``[H, W, 3]`` uint8 image with cv2 bilinear; returns it and ``(w_scale, h_scale)``."""
    h, w = img.shape[:2]
    (nw, nh), _ = rescale_size(w, h, scale)
    out = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, (nw / w, nh / h)


def normalize(img_bgr: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``[3, H, W]`` uint8 BGR -> float32 RGB ``(x - mean) / std`` (mean/std in RGB order)."""
    m = torch.tensor(mean, dtype=torch.float32, device=img_bgr.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=img_bgr.device).view(3, 1, 1)
    return (img_bgr[[2, 1, 0]].float() - m) / s


def pad_shape(hw: Sequence[int], size_divisor: int = 32) -> tuple[int, int]:
    return (int(math.ceil(hw[0] / size_divisor) * size_divisor), int(math.ceil(hw[1] / size_divisor) * size_divisor))


def pad_batch(images: Sequence[Tensor], size_divisor: int = 32) -> tuple[Tensor, list[tuple[int, int]]]:
    """Zero-pad normalized ``[3, H_i, W_i]`` images bottom-right to the batch max rounded up to the divisor.

    Returns the batch ``[B, 3, H, W]`` and each image's own ``pad_shape`` (its size rounded up).
    """
    if not images:
        raise ValueError("pad_batch: no images")
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    H, W = pad_shape((h, w), size_divisor)
    batch = images[0].new_zeros(len(images), 3, H, W)
    for i, im in enumerate(images):
        batch[i, :, :im.shape[1], :im.shape[2]] = im
    return batch, [pad_shape(im.shape[1:], size_divisor) for im in images]


def preprocess(images_bgr: Sequence[Tensor], mean: Sequence[float], std: Sequence[float], size_divisor: int = 32,
               metas: Optional[Sequence[dict]] = None) -> tuple[Tensor, list[dict]]:
    """Normalize and pad resized uint8 BGR images ``[3, H, W]``; fills ``img_shape`` and ``pad_shape``."""
    norm = [normalize(im, mean, std) for im in images_bgr]
    batch, pads = pad_batch(norm, size_divisor)
    out = []
    for i, im in enumerate(images_bgr):
        m = dict(metas[i]) if metas is not None else {}
        m.setdefault("img_shape", tuple(im.shape[1:]))
        m["pad_shape"] = pads[i]
        m["batch_input_shape"] = tuple(batch.shape[2:])
        m.setdefault("scale_factor", (1.0, 1.0))
        m.setdefault("ori_shape", tuple(im.shape[1:]))
        out.append(m)
    return batch, out


def load_image(path: str) -> np.ndarray:
    """Read an image as ``[H, W, 3]`` uint8 BGR; raises ``ValueError`` naming the file when unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        import os
        if not os.path.exists(path):
            raise FileNotFoundError(f"image file not found: {path}")
        raise ValueError(f"cannot decode image (corrupt or not an image): {path}")
    return img


def prepare_image(img_bgr: np.ndarray, scale: Sequence[int]) -> tuple[Tensor, dict]:
    """Test-time: keep-ratio resize of a decoded image -> ``[3, h, w]`` uint8 tensor and its meta."""
    ori = img_bgr.shape[:2]
    resized, sf = resize_keep_ratio(img_bgr, scale)
    t = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return t, dict(ori_shape=tuple(ori), img_shape=tuple(resized.shape[:2]), scale_factor=sf)
