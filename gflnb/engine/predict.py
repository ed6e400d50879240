"""A detector for a user's own pictures: ``gflnb.Detector`` and ``gflnb predict``.

``Detector(config, checkpoint)`` (or ``Detector(onnx="model.onnx")``) takes paths, numpy images
(BGR, as OpenCV reads them, like mmdetection's inferencer), PIL images or lists of them, and returns
per image the boxes in the original image's pixels, scores, labels, class names and, per box and
side (left, top, right, bottom), the learned distribution summarised:

* ``edges [K, 4]``: the side's expected position (the Integral: the distribution's mean, which is the
  box's coordinate; clamped to the image as the box is), in original pixels;
* ``std_px [K, 4]``: the distribution's standard deviation, in original pixels;
* ``entropy [K, 4]``: its Shannon entropy, in nats (0: all mass on one bin; log(R+1) = 2.83 for
  R = 16: uniform).

Chapter 5 (notebooks/05_learned_distributions.py) measured on held-out synthetic edges that the
entropy grows with the edge's ambiguity and its error. Preprocessing is the reference's
(gflnb/data/preprocess.py); the forward and the selection are ``GFL.predict``'s (or the ONNX export's
with :func:`gflnb.engine.export.postprocess`), so ``detect`` returns what they return.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from ..config import GFLConfig
from ..data.coco import class_names_for, label_to_category
from ..data.preprocess import pad_shape, prepare_image, preprocess
from ..model.box_repr import build_box_coder

SIDES = ("left", "top", "right", "bottom")


class PredictError(ValueError):
    """Bad input found before any work starts (the CLI prints it as one line)."""


# ------------------------------------------------------------------ the distributions, summarised
def entropy(p: Union[torch.Tensor, np.ndarray], axis: int = -1) -> np.ndarray:
    """Shannon entropy (nats) of distributions along ``axis``."""
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.clip(p, 1e-12, 1))).sum(axis)


def dist_std(p: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """Standard deviation (in bins) of distributions over bins 0..R on the last axis."""
    p = np.asarray(p, dtype=np.float64)
    bins = np.arange(p.shape[-1])
    mean = (p * bins).sum(-1, keepdims=True)
    return np.sqrt((p * (bins - mean) ** 2).sum(-1))


def side_uncertainty(dists: np.ndarray, strides: np.ndarray, scale_factor: Sequence[float],
                     bin_interval: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``dists [K, 4, R+1]`` bin probabilities, ``strides [K]`` -> ``(std_px [K, 4], entropy [K, 4])``.

    A bin is ``bin_interval`` strides of the resized image; the left and right sides' pixels are
    divided by the width's resize factor, the top and bottom sides' by the height's.
    """
    sw, sh = float(scale_factor[0]), float(scale_factor[1])
    per_side = np.array([1 / sw, 1 / sh, 1 / sw, 1 / sh])  # [4]
    std_px = dist_std(dists) * bin_interval * np.asarray(strides, np.float64)[:, None] * per_side  # [K, 4]
    return std_px, entropy(dists)


# ------------------------------------------------------------------ results
@dataclass
class Detections:
    """One image's detections, by descending score. Boxes ``xyxy`` in the original image's pixels."""
    source: str  # file name, "clip.mp4#12" (frame 12), or "<image 0>" for an in-memory image
    image_size: tuple[int, int]  # (H, W) of the original image
    boxes: np.ndarray  # [K, 4] float32
    scores: np.ndarray  # [K] float32
    labels: np.ndarray  # [K] int64, 0..C-1
    names: list[str]  # [K] class names
    std_px: Optional[np.ndarray] = None  # [K, 4] left, top, right, bottom; None without a box distribution
    entropy: Optional[np.ndarray] = None  # [K, 4] nats
    dists: Optional[np.ndarray] = None  # [K, 4, R+1] when asked for (with_dists=True)
    strides: Optional[np.ndarray] = None  # [K] the FPN level's stride of each detection, with dists
    scale_factor: tuple[float, float] = (1.0, 1.0)  # (w, h) resize factors of the network's input
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def edges(self) -> np.ndarray:
        """``[K, 4]`` each side's expected position: the distribution's mean is the box's coordinate."""
        return self.boxes

    def above(self, score_thr: float) -> "Detections":
        """The detections scoring at least ``score_thr`` (for drawing)."""
        keep = self.scores >= score_thr
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return Detections(self.source, self.image_size, self.boxes[keep], self.scores[keep], self.labels[keep],
                          [n for n, k in zip(self.names, keep) if k], pick(self.std_px), pick(self.entropy),
                          pick(self.dists), pick(self.strides), self.scale_factor, dict(self.extra))

    def to_coco(self, image_id: int, label2cat: dict[int, int], full_dists: bool = False) -> list[dict]:
        """COCO results (what ``gflnb evaluate`` writes) plus ``file_name``, ``class_name`` and per side
        ``uncertainty``: ``edge`` and ``std_px`` (original pixels), ``entropy`` (nats), in the order
        left, top, right, bottom; ``dists`` too with ``full_dists``."""
        from .evaluate import coco_result
        out = []
        for k in range(len(self)):
            r = coco_result(image_id, int(label2cat[int(self.labels[k])]), self.boxes[k], self.scores[k])
            r.update(file_name=self.source, class_name=self.names[k])
            if self.std_px is not None:
                r["uncertainty"] = dict(sides=list(SIDES), edge=[round(float(v), 3) for v in self.boxes[k]],
                                        std_px=[round(float(v), 3) for v in self.std_px[k]],
                                        entropy=[round(float(v), 4) for v in self.entropy[k]])
            if full_dists and self.dists is not None:
                r["dists"] = [[round(float(v), 5) for v in side] for side in self.dists[k]]
            out.append(r)
        return out


# ------------------------------------------------------------------ inputs
ImageLike = Any  # str | os.PathLike | np.ndarray [H, W, 3] BGR or [H, W] | PIL.Image.Image


def to_bgr(x: ImageLike) -> tuple[np.ndarray, str]:
    """One input -> ``([H, W, 3] uint8 BGR, its name)``. Numpy images are taken as BGR (OpenCV's order,
    as mmdetection's inferencer takes them); PIL images are converted from RGB."""
    from ..data.folder import read_image
    if isinstance(x, (str, os.PathLike)):
        path = str(x)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        try:
            return read_image(path), path
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    if isinstance(x, np.ndarray):
        img = x
    elif hasattr(x, "convert") and hasattr(x, "size"):  # PIL, without importing it for everyone
        img = np.asarray(x.convert("RGB"))[..., ::-1]
    else:
        raise TypeError(f"cannot read an image from {type(x).__name__}: give a path, a numpy array or a PIL image")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or min(img.shape[:2]) < 1:
        raise ValueError(f"expected an image [H, W, 3], got an array of shape {tuple(img.shape)}")
    if img.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels (0..255), got {img.dtype}")
    return np.ascontiguousarray(img[..., :3]), ""


# ------------------------------------------------------------------ the detector
class Detector:
    """A GFL checkpoint (gflnb's or the model zoo's) or an exported ONNX file, on any image.

    ``Detector("gfl_r50_fpn_1x_coco", "gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth")``,
    ``Detector(checkpoint="work/latest.pth")`` (gflnb's files carry their config),
    ``Detector(onnx="model.onnx")`` (``gflnb export``'s files; onnxruntime on the CPU).

    ``class_names`` default to a gflnb checkpoint's, COCO's for 80 classes, else the label numbers.
    ``batch_size``: images of the same padded size run together (only those: the head's GroupNorm
    sees the whole padded map, so a batch of mixed sizes would change the numbers).
    """

    def __init__(self, config: Union[str, GFLConfig, None] = None, checkpoint: Union[str, os.PathLike, None] = None,
                 *, onnx: Union[str, os.PathLike, None] = None, device: str = "cpu",
                 class_names: Optional[Sequence[str]] = None, batch_size: int = 8, **overrides: Any):
        from ..config import get_config
        if (checkpoint is None) == (onnx is None):
            raise PredictError("give a checkpoint, or onnx= an exported model (gflnb export), not both")
        self.model, self.onnx = None, None
        if onnx is not None:
            from .export import OnnxDetector
            if not os.path.isfile(onnx):
                raise PredictError(f"ONNX file {onnx}: no such file")
            self.onnx = OnnxDetector(onnx)
            self.cfg = self.onnx.cfg
            meta = dict(self.onnx.meta)
            if config is not None:  # a preset name must agree with the exported model's
                name = config if isinstance(config, str) else config.name
                get_config(name)
                if name != self.cfg.name:
                    raise PredictError(f"ONNX file {onnx} was exported from preset {self.cfg.name!r}, not {name!r}")
            self.device = "cpu"
        else:
            from .checkpoint import model_from_checkpoint
            self.model, meta = model_from_checkpoint(checkpoint, config, **overrides)
            self.cfg = self.model.cfg
            self.device = str(device)
            self.model.to(self.device)
        self.meta = meta
        self.has_dist = build_box_coder(self.cfg.box, self.cfg.reg_max, self.cfg.bin_interval).has_distribution
        if self.onnx is not None and "dists" not in self.onnx.output_names:
            self.has_dist = False  # exported before the graph carried the distributions
        names = list(class_names) if class_names is not None else class_names_for(self.cfg.num_classes, meta)
        if len(names) != self.cfg.num_classes:
            raise PredictError(f"{len(names)} class names for a model of {self.cfg.num_classes} classes")
        self.class_names = names
        self.label2cat = label_to_category(self.cfg.num_classes, meta)
        self.batch_size = max(int(batch_size), 1)

    @classmethod
    def from_model(cls, model, class_names: Optional[Sequence[str]] = None, batch_size: int = 8) -> "Detector":
        """A detector on a model in memory (a notebook's, a test's): its weights as they are now."""
        self = cls.__new__(cls)
        self.model, self.onnx, self.meta, self.cfg = model.eval(), None, {}, model.cfg
        self.device = str(next(model.parameters()).device)
        self.has_dist = model.bbox_head.box_coder.has_distribution
        self.class_names = list(class_names) if class_names is not None else class_names_for(model.cfg.num_classes)
        self.label2cat = label_to_category(model.cfg.num_classes)
        self.batch_size = max(int(batch_size), 1)
        return self

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.onnx is not None else f"torch ({self.device})"

    def detect(self, inputs: Union[ImageLike, Sequence[ImageLike]], score_thr: Optional[float] = None,
               device: Optional[str] = None, with_dists: bool = False) -> Union[Detections, list[Detections]]:
        """Detections of one image (one :class:`Detections`) or of a list (a list).

        ``score_thr`` defaults to the config's (0.05, the COCO evaluation's); ``device`` moves the
        torch model (``"cuda"``); ``with_dists=True`` keeps every box's full distributions.
        """
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        if device is not None and self.model is not None and str(device) != self.device:
            self.device = str(device)
            self.model.to(self.device)
        decoded = []
        for i, x in enumerate(items):
            img, name = to_bgr(x)
            decoded.append((img, name or f"<image {i}>"))
        out = self.detect_bgr([d[0] for d in decoded], [d[1] for d in decoded], score_thr, with_dists)
        return out[0] if single else out

    @torch.no_grad()
    def detect_bgr(self, images: Sequence[np.ndarray], sources: Sequence[str], score_thr: Optional[float] = None,
                   with_dists: bool = False) -> list[Detections]:
        """Decoded ``[H, W, 3]`` uint8 BGR images -> their :class:`Detections`, in order."""
        cfg = self.cfg
        prepared = [prepare_image(img, cfg.img_scale) for img in images]  # ([3, h, w] uint8, meta)
        # images of one padded size, in batches: the same numbers as one at a time (see the class)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (t, _) in enumerate(prepared):
            groups.setdefault(pad_shape(t.shape[1:], cfg.size_divisor), []).append(i)
        results: list[Optional[Detections]] = [None] * len(images)
        over = {} if score_thr is None else dict(score_thr=float(score_thr))
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                part = idx[start:start + self.batch_size]
                batch, metas = preprocess([prepared[i][0] for i in part], cfg.mean, cfg.std, cfg.size_divisor,
                                          [prepared[i][1] for i in part])
                if self.onnx is not None:
                    dets = self.onnx.predict(batch, metas, rescale=True, with_dist=self.has_dist, **over)
                else:
                    dets = self.model.predict(batch.to(self.device), metas, rescale=True, with_dist=self.has_dist,
                                              **over)
                for i, d, m in zip(part, dets, metas):
                    results[i] = self._detections(d, m, sources[i], with_dists)
        return results  # type: ignore[return-value]

    def _detections(self, d: dict, meta: dict, source: str, with_dists: bool) -> Detections:
        labels = d["labels"].cpu().numpy().astype(np.int64)
        det = Detections(source=source, image_size=tuple(meta["ori_shape"]), boxes=d["boxes"].float().cpu().numpy(),
                         scores=d["scores"].float().cpu().numpy(), labels=labels,
                         names=[self.class_names[int(k)] for k in labels], scale_factor=tuple(meta["scale_factor"]))
        if "dists" in d:
            dists, strides = d["dists"].float().cpu().numpy(), d["strides"].float().cpu().numpy()
            det.std_px, det.entropy = side_uncertainty(dists, strides, meta["scale_factor"], self.cfg.bin_interval)
            if with_dists:
                det.dists, det.strides = dists, strides
        return det

    __call__ = detect


# ------------------------------------------------------------------ gflnb predict
def check_writable_dir(out: Union[str, os.PathLike]) -> Path:
    """Create ``out`` (and parents) and check a file can be written there; :class:`PredictError` if not."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PredictError(f"output {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".gflnb-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PredictError(f"cannot write to output folder {out}: {e.strerror or e}") from None
    return out


def _frames(sources, skipped: list, warn) -> Iterator[tuple[np.ndarray, str, Any]]:
    """Every image and every video frame, in order: ``(bgr, source name, video or None)``."""
    from ..data.folder import read_image, video_frames
    for src in sources:
        if src.kind == "video":
            n = 0
            try:
                for n, frame in enumerate(video_frames(src.path)):
                    yield frame, f"{src.path}#{n}", src
            except ValueError as e:
                skipped.append((src.path, str(e)))
                warn(src.path, str(e))
                continue
        else:
            try:
                img = read_image(src.path)
            except ValueError as e:
                skipped.append((src.path, str(e)))
                warn(src.path, str(e))
                continue
            yield img, src.path, None


def _out_name(path: str, used: set[str], suffix: str) -> str:
    stem = Path(path).stem
    name, k = f"{stem}{suffix}", 1
    while name in used:
        name, k = f"{stem}_{k}{suffix}", k + 1
    used.add(name)
    return name


def run_predict(det: Detector, inputs: Sequence[str], out_dir: Union[str, os.PathLike],
                score_thr: Optional[float] = None, draw_thr: float = 0.3, bars: bool = True, draw: bool = True,
                ann: Optional[str] = None, full_dists: bool = False, progress: bool = True,
                stderr=None) -> dict[str, Any]:
    """``gflnb predict``: detect on every image and video frame of ``inputs``, write ``results.json``
    (COCO results with ``file_name`` and per-side ``uncertainty``), ``images.json`` (every image,
    with or without detections, and the skipped inputs) and the drawn images/videos into ``out_dir``.

    ``ann``: a COCO annotation file whose ``images`` give the ``image_id`` of each file name (so the
    results evaluate against it); without it images are numbered 1, 2, ... in order. Unreadable inputs
    are skipped with one line each on ``stderr``. Returns the summary.
    """
    import cv2
    from tqdm import tqdm

    from ..data.folder import list_inputs, video_fps, video_length
    from .draw import draw_detections
    stderr = stderr or sys.stderr
    out = check_writable_dir(out_dir)
    ids: Optional[dict[str, int]] = None
    label2cat = det.label2cat
    if ann is not None:
        from ..data.coco import _load_coco
        coco = _load_coco(ann)
        ids = {Path(im["file_name"]).name: int(im["id"]) for im in coco.dataset["images"]}
        cats = sorted(coco.getCatIds())
        if len(cats) != det.cfg.num_classes:
            raise PredictError(f"{ann} has {len(cats)} categories but the model {det.cfg.num_classes} classes")
        label2cat = dict(enumerate(cats))  # as gflnb evaluate maps labels (sorted category ids)
    sources, skipped = list_inputs(inputs)

    def warn(path: str, why: str) -> None:
        tqdm.write(f"gflnb: skipped {path}: {why}", file=stderr)  # on its own line, above the progress bar

    for path, why in skipped:
        warn(path, why)

    def skip_counted(path: str, why: str) -> None:  # a file the progress bar counted: it moves on
        warn(path, why)
        bar.update(1)
    total = sum(1 for s in sources if s.kind == "image") + sum(video_length(s.path) for s in sources
                                                                if s.kind == "video")  # for the progress bar
    results, images, used = [], [], set()
    writers: dict[str, Any] = {}
    t0 = time.perf_counter()
    n_img = n_det = n_drawn = 0
    bar = tqdm(total=total, desc="predict", unit="img", disable=not progress, file=stderr)
    frames = _frames(sources, skipped, skip_counted)
    while True:
        chunk = [f for _, f in zip(range(det.batch_size), frames)]
        if not chunk:
            break
        dets = det.detect_bgr([c[0] for c in chunk], [c[1] for c in chunk], score_thr, with_dists=full_dists)
        for (img, name, video), d in zip(chunk, dets):
            key = Path(name).name if video is None else Path(video.path).name
            if ids is not None and key not in ids:
                skipped.append((name, f"not among the images of {ann}"))
                warn(name, f"not among the images of {ann}")
                bar.update(1)
                continue
            image_id = ids[key] if ids is not None else len(images) + 1
            results += d.to_coco(image_id, label2cat, full_dists)
            entry = dict(image_id=image_id, file_name=name, height=d.image_size[0], width=d.image_size[1],
                         detections=len(d))
            if draw:
                canvas = draw_detections(img, d.above(draw_thr), bars=bars)
                if video is None:
                    fname = _out_name(name, used, ".jpg")
                    cv2.imwrite(str(out / fname), canvas)
                    entry["drawn"] = fname
                else:
                    if video.path not in writers:
                        vname = _out_name(video.path, used, ".mp4")
                        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                        writers[video.path] = (vname, cv2.VideoWriter(str(out / vname), fourcc, video_fps(video.path),
                                                                      (canvas.shape[1], canvas.shape[0])))
                    writers[video.path][1].write(canvas)
                    entry["drawn"] = writers[video.path][0]
                n_drawn += 1
            images.append(entry)
            n_img += 1
            n_det += len(d)
            bar.update(1)
    bar.close()
    for _, w in writers.values():
        w.release()
    wall = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results))
    summary = dict(images=n_img, detections=n_det, skipped=len(skipped), wall_s=round(wall, 3),
                   images_per_s=round(n_img / wall, 3) if wall > 0 else None, backend=det.backend,
                   config=det.cfg.name, score_thr=det.cfg.score_thr if score_thr is None else score_thr,
                   results=str(out / "results.json"), drawn=n_drawn)
    (out / "images.json").write_text(json.dumps(dict(summary=summary, images=images,
                                                     skipped=[dict(input=p, reason=w) for p, w in skipped]),
                                                indent=1))
    return summary


def summary_line(s: dict[str, Any]) -> str:
    return (f"gflnb predict: {s['images']} images, {s['detections']} detections (score >= {s['score_thr']:g}) "
            f"in {s['wall_s']:.1f} s ({s['images_per_s'] or 0:.1f} images/s, {s['backend']}); "
            f"{s['skipped']} skipped; results: {s['results']}")
