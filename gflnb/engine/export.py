"""ONNX export of GFL's inference path, with the distribution decode in the graph, and its runner.

The graph (:func:`export_onnx`) takes ``images [B, 3, H, W]`` (normalized and padded, as
``gflnb.data.preprocess`` makes them; B, H and W are dynamic) and holds everything up to NMS:

* backbone (BatchNorm folded into the convs, :func:`gflnb.model.fuse.fuse_for_inference`), FPN, head;
* the box decode: the softmax over the ``reg_max + 1`` bins and the Integral (``box`` 'dfl' and
  'integral'; 'dirac' clamps its four distances at 0), times the level's stride;
* the anchor points ``(x*s, y*s)`` of each level, computed in the graph from the feature map's
  shape, and the distance-to-box decoding;
* the score of the quality component (gflnb/model/quality.py), the very function ``GFLHead.predict``
  calls: ``sigmoid(cls)`` for ``qfl`` and ``none``, ``sigmoid(cls) x DGQP`` for ``dgqp``.

Outputs, levels concatenated (P3 first, row-major within a level, as the head orders anchors):
``boxes [B, A, 4]`` (xyxy in pixels of the input, not yet clamped), ``scores [B, A, C]`` (what the
score threshold and ``nms_pre`` see), for a separate quality branch (``centerness``, ``iou``)
only, ``quality [B, A]``, the sigmoid factor the kept scores are multiplied by before NMS (mmdet
3.x ``score_factors``) and, for a box distribution (``dfl``, ``integral``) only, ``dists [B, A, 4,
R+1]``, each side's bin probabilities, from which ``gflnb.Detector`` reads every detection's
uncertainty (files exported before it lack this output and give detections without it). The model's config travels in the file's metadata (key ``gflnb``).

**NMS is not in the graph.** :func:`postprocess` does the rest in numpy: per level the (anchor,
class) pairs over ``score_thr`` and the best ``nms_pre``, the clamp to the image's own unpadded
size, the rescale to the original image, the minimum-size filter, class-aware NMS at
``iou_threshold`` and the first ``max_per_img``. Why there and not in ONNX ``NonMaxSuppression``:

* it reproduces ``GFL.predict``'s selection exactly: the same operations in float32 as
  torchvision's CPU NMS on mmcv's label-offset boxes. ONNX's operator is per class with its own
  IoU arithmetic and tie order, has no per-level ``nms_pre``, and needs a TopK and gathers after
  it for ``max_per_img``, so its detections would only match after reordering;
* the clamp needs each image's unpadded size, which is not in the padded input tensor;
* it is what onnxruntime users of one-stage detectors already run: the YOLOv5/v8, YOLOX and
  NanoDet (a GFL) exports end at the dense decoded boxes and scores, and the host program does the
  NMS, with thresholds it can change without exporting again. :class:`OnnxDetector` wraps both.

It is exported with the TorchScript-based ``torch.onnx.export(dynamo=False)`` at opset 17, whose
``dynamic_axes`` keep the input size dynamic (the feature-map sizes, and so the anchor points,
follow the input's shape at run time).
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..boxes import NMS_SPLIT_THR, distance2bbox, featmap_sizes_for
from ..config import from_dict
from ..files import atomic_path
from ..model.detector import GFL
from ..model.fuse import fuse_for_inference
from ..numerics.portable import threads as portable_threads

OPSET = 17
METADATA_KEY = "gflnb"
# The traced sample's size: any multiple of 32 works (the axes are dynamic); not square, so that no
# height/width mix-up can hide in the trace.
SAMPLE_HW = (256, 320)
# test-time settings of GFL.predict that postprocess takes (their values come from the config)
TEST_FIELDS = ("score_thr", "nms_pre", "iou_threshold", "max_per_img", "min_bbox_size")


class ExportError(RuntimeError):
    """A model or output path that cannot be exported (gflnb's CLI prints it as one line)."""


# --------------------------------------------------------------------------- the graph
class ExportNet(nn.Module):
    """``images [B, 3, H, W]`` -> ``boxes [B, A, 4]``, ``scores [B, A, C]`` (and ``quality [B, A]``).

    Wraps an eval-mode copy of ``model`` with BatchNorm folded, in NCHW (the layout is the
    runtime's business). The head's own ``box_coder.decode`` and ``quality.scores`` compute the
    outputs, so they are the numbers ``GFLHead.predict`` thresholds and ranks.
    """

    def __init__(self, model: GFL):
        super().__init__()
        net = fuse_for_inference(model)
        net._nhwc = False  # no channels_last reorder in the graph
        self.net = net.to(memory_format=torch.contiguous_format).requires_grad_(False)
        head = self.net.bbox_head
        self.has_quality = head.quality.extra_channels > 0
        self.has_dists = head.box_coder.has_distribution
        self.output_names = (["boxes", "scores"] + (["quality"] if self.has_quality else [])
                             + (["dists"] if self.has_dists else []))

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        head = self.net.bbox_head
        cls_scores, bbox_preds = self.net(images)
        C = head.num_classes
        boxes_l, scores_l, quality_l, dists_l = [], [], [], []
        for cls, reg, s in zip(cls_scores, bbox_preds, head.strides):
            B, h, w = cls.shape[0], cls.shape[2], cls.shape[3]  # traced: dynamic in the graph
            cls_f = cls.permute(0, 2, 3, 1).reshape(-1, C)  # [B*h*w, C]
            reg_f = reg.permute(0, 2, 3, 1).reshape(-1, head.reg_channels)  # [B*h*w, box + E]
            box_f, extra_f = reg_f[:, :head.box_channels], reg_f[:, head.box_channels:]
            scores, factor = head.quality.scores(cls_f, box_f, extra_f)  # [B*h*w, C], [B*h*w] or None
            # anchor centres (x*s, y*s): grid_anchors' (x*s - 4s + x*s + 4s) / 2, exact in float32
            xs = torch.arange(w, dtype=torch.float32, device=images.device) * s  # [w]
            ys = torch.arange(h, dtype=torch.float32, device=images.device) * s  # [h]
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)  # [h*w, 2]
            dists = head.box_coder.decode(box_f) * s  # [B*h*w, 4] pixels
            boxes = distance2bbox(points.repeat(B, 1), dists)  # [B*h*w, 4]
            boxes_l.append(boxes.reshape(B, -1, 4))
            scores_l.append(scores.reshape(B, -1, C))
            if factor is not None:
                quality_l.append(factor.reshape(B, -1))
            if self.has_dists:
                dists_l.append(head.box_coder.distribution(box_f).reshape(B, -1, 4, head.reg_max + 1))  # [B, h*w, 4, R+1]
        out = (torch.cat(boxes_l, 1), torch.cat(scores_l, 1))
        out = out + (torch.cat(quality_l, 1),) if quality_l else out
        return out + (torch.cat(dists_l, 1),) if dists_l else out


def _check_writable(out: Path) -> None:
    if out.is_dir():
        raise ExportError(f"output {out} is a directory, not a file path")
    parent = out.parent
    if not parent.is_dir():
        raise ExportError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ExportError(f"cannot write {out}: permission denied")


@torch.no_grad()
def export_onnx(model: GFL, out: Union[str, os.PathLike], opset: int = OPSET,
                sample_hw: Sequence[int] = SAMPLE_HW, classes: Optional[Sequence[str]] = None,
                label2cat: Optional[Mapping[int, int]] = None) -> Path:
    """Write ``model``'s inference path to ``out`` as ONNX (see the module docstring); returns ``out``.

    ``classes`` and ``label2cat`` (a gflnb checkpoint's ``meta``) travel in the metadata too, so that
    ``gflnb.Detector(onnx=...)`` names classes and COCO category ids as the checkpoint did.

    Written to a temporary file beside ``out`` and renamed into place, so a failed export leaves
    no partial file.
    """
    import onnx
    out = Path(out)
    cfg = model.cfg
    if any(cfg.stage_with_dcn):
        raise ExportError(f"config {cfg.name!r} has deformable convolutions (stage_with_dcn), which this "
                          "export does not support")
    if opset < 17:
        raise ExportError(f"opset must be >= 17, got {opset}")
    _check_writable(out)
    net = ExportNet(model)
    sample = torch.zeros(1, 3, *sample_hw)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    axes.update({n: {0: "batch", 1: "anchors"} for n in net.output_names})
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            # the TorchScript exporter's deprecation notice, and tracer notes on shape arithmetic
            # that is exact here (the sizes are traced as graph values, see test_export.py)
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (sample,), str(tmp), dynamo=False, opset_version=opset, input_names=["images"],
                              output_names=net.output_names, dynamic_axes=axes, do_constant_folding=True)
        proto = onnx.load(str(tmp))
        meta = dict(config=cfg.to_dict(), outputs=net.output_names, opset=opset)
        if classes is not None:
            meta["classes"] = [str(c) for c in classes]
        if label2cat is not None:
            meta["label2cat"] = {str(k): int(v) for k, v in label2cat.items()}
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return out


# --------------------------------------------------------------------------- post-processing (numpy)
def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS as torchvision's CPU kernel computes it: ``boxes [N, 4]`` float32, ``scores [N]``
    -> kept indices ``[K]`` int64 by descending score (ties: lower index first, its stable sort).

    Same float32 operations in the same order (area ``(x2-x1)(y2-y1)``, IoU ``inter / (area_i +
    area_j - inter)``), and the IoU compared with the threshold in double, as C++ promotes it.
    """
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    zero = np.float32(0)
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(ovr.astype(np.float64) > float(iou_threshold))]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware NMS as :func:`gflnb.boxes.batched_nms` (mmcv): one NMS on boxes shifted by
    ``label * (max coordinate + 1)`` below ``NMS_SPLIT_THR`` boxes, a loop over classes above."""
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if boxes.shape[0] < NMS_SPLIT_THR:
        offsets = labels.astype(np.float32) * (boxes.max() + np.float32(1))  # [N]
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    keep_mask = np.zeros(scores.shape[0], dtype=bool)
    for lab in np.unique(labels):
        idx = np.nonzero(labels == lab)[0]
        keep_mask[idx[nms(boxes[idx], scores[idx], iou_threshold)]] = True
    keep = np.nonzero(keep_mask)[0]
    return keep[np.argsort(-scores[keep], kind="stable")]


def postprocess(boxes: np.ndarray, scores: np.ndarray, quality: Optional[np.ndarray], level_sizes: Sequence[int],
                img_shape: Sequence[int], scale_factor: Optional[Sequence[float]] = None, *,
                score_thr: float = 0.05, nms_pre: int = 1000, iou_threshold: float = 0.6, max_per_img: int = 100,
                min_bbox_size: float = 0, with_index: bool = False) -> tuple[np.ndarray, ...]:
    """One image's graph outputs -> ``(boxes [K, 4], scores [K], labels [K])``, as ``GFLHead.predict``.

    ``boxes [A, 4]``, ``scores [A, C]``, ``quality [A]`` or None (the graph's outputs for one
    image), ``level_sizes`` the anchors per level (``h*w``, P3 first), ``img_shape`` the image's
    ``(h, w)`` before padding (boxes are clamped to it), ``scale_factor`` its ``(w, h)`` resize
    factors (boxes are divided by them: ``rescale=True``; None keeps the resized image's pixels).
    The settings default to the config's; :class:`OnnxDetector` passes the exported model's own.
    ``with_index=True`` adds ``anchors [K]``, each detection's anchor (row of ``boxes``), to read the
    graph's other per-anchor outputs (``dists``) for the detections.
    """
    if sum(level_sizes) != boxes.shape[0]:
        raise ValueError(f"postprocess: levels of {list(level_sizes)} anchors ({sum(level_sizes)}) but "
                         f"{boxes.shape[0]} boxes")
    h, w = img_shape[0], img_shape[1]
    thr = np.float32(score_thr)  # torch compares a float32 tensor with a Python float in float32
    boxes_l, scores_l, labels_l, index_l = [], [], [], []
    start = 0
    for n in level_sizes:
        level = slice(start, start + n)
        start += n
        sc = scores[level]  # [n, C]
        a_idx, labels = np.nonzero(sc > thr)  # (anchor, class) pairs, row-major as torch's nonzero
        cand = sc[a_idx, labels]
        order = np.argsort(-cand, kind="stable")[:nms_pre]
        a_idx, labels, cand = a_idx[order], labels[order], cand[order]
        b = boxes[level][a_idx]  # [k, 4]
        b = np.stack([np.clip(b[:, 0], 0, w), np.clip(b[:, 1], 0, h), np.clip(b[:, 2], 0, w),
                      np.clip(b[:, 3], 0, h)], axis=-1)
        boxes_l.append(b)
        scores_l.append(cand if quality is None else cand * quality[level][a_idx])
        labels_l.append(labels)
        index_l.append(a_idx + level.start)
    boxes_k = np.concatenate(boxes_l).astype(np.float32, copy=False)
    scores_k = np.concatenate(scores_l).astype(np.float32, copy=False)
    labels_k = np.concatenate(labels_l).astype(np.int64)
    index_k = np.concatenate(index_l).astype(np.int64)
    if scale_factor is not None:
        sw, sh = scale_factor[0], scale_factor[1]
        boxes_k = boxes_k * np.array([1 / sw, 1 / sh, 1 / sw, 1 / sh], dtype=np.float32)
    if min_bbox_size >= 0:
        m = np.float32(min_bbox_size)
        ok = ((boxes_k[:, 2] - boxes_k[:, 0]) > m) & ((boxes_k[:, 3] - boxes_k[:, 1]) > m)
        boxes_k, scores_k, labels_k, index_k = boxes_k[ok], scores_k[ok], labels_k[ok], index_k[ok]
    if boxes_k.shape[0] > 0:
        keep = batched_nms(boxes_k, scores_k, labels_k, iou_threshold)[:max_per_img]
        boxes_k, scores_k, labels_k, index_k = boxes_k[keep], scores_k[keep], labels_k[keep], index_k[keep]
    return (boxes_k, scores_k, labels_k) + ((index_k,) if with_index else ())


# --------------------------------------------------------------------------- the runner
def _meta(meta: Mapping[str, Any], key: str, i: int) -> Any:
    try:
        return meta[key]
    except (KeyError, TypeError):
        raise KeyError(f"image meta {i} lacks {key!r}") from None


class OnnxDetector:
    """An exported GFL run by onnxruntime, with :func:`postprocess`: ``predict`` returns what
    ``GFL.predict`` does.

    ``threads``: onnxruntime's intra-op threads; default gflnb's (``gflnb.numerics.portable.threads()``: 2,
    unless ``OMP_NUM_THREADS`` or ``GFLNB_THREADS`` say otherwise; 0 is onnxruntime's own choice).
    ``test_overrides`` replace the exported config's ``score_thr``, ``nms_pre``, ... .
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None, **test_overrides: Any):
        import onnxruntime as ort
        unknown = set(test_overrides) - set(TEST_FIELDS)
        if unknown:
            raise ValueError(f"OnnxDetector: unknown settings {sorted(unknown)}; known: {', '.join(TEST_FIELDS)}")
        opts = ort.SessionOptions()
        n = portable_threads() if threads is None else threads
        opts.intra_op_num_threads = max(n, 0)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # idle workers otherwise spin after each run, taking a core from whatever runs next
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{path}: not a gflnb export (no {METADATA_KEY!r} metadata)")
        info = json.loads(raw)
        self.cfg = from_dict(info["config"])
        self.output_names = list(info["outputs"])
        self.meta = {k: info[k] for k in ("classes", "label2cat") if k in info}  # the checkpoint's, when exported
        self.settings = {k: getattr(self.cfg, k) for k in TEST_FIELDS}
        self.settings.update(test_overrides)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The graph alone: ``images [B, 3, H, W]`` float32 -> ``boxes``, ``scores`` (, ``quality``)."""
        outs = self.session.run(self.output_names, {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return dict(zip(self.output_names, outs))

    def predict(self, images: Union[Tensor, np.ndarray], metas: Sequence[Mapping[str, Any]],
                rescale: bool = True, with_dist: bool = False, **test_overrides: Any) -> list[dict[str, Tensor]]:
        """Per image ``dict(boxes [K, 4], scores [K], labels [K])`` by descending score, as
        ``GFL.predict``; ``metas`` give each image's ``img_shape`` (and ``scale_factor`` to rescale).
        ``with_dist=True`` adds ``dists [K, 4, R+1]`` and ``strides [K]``, as ``GFL.predict`` does; it
        needs a file exported with the ``dists`` output. ``test_overrides`` replace this call's
        settings (``score_thr``, ...), as ``GFL.predict``'s do."""
        unknown = set(test_overrides) - set(TEST_FIELDS)
        if unknown:
            raise ValueError(f"OnnxDetector.predict: unknown settings {sorted(unknown)}")
        settings = {**self.settings, **test_overrides}
        if with_dist and "dists" not in self.output_names:
            raise ValueError("with_dist=True needs the graph's 'dists' output: this file has none (exported "
                             "before it existed, or from a model without a box distribution)")
        x = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"OnnxDetector expects images [B, 3, H, W], got {tuple(x.shape)}")
        if len(metas) != x.shape[0]:
            raise ValueError(f"OnnxDetector.predict: {x.shape[0]} images but {len(metas)} metas")
        out = self.run(x)
        sizes = [h * w for h, w in featmap_sizes_for(x.shape[2:], self.cfg.strides)]
        anchor_strides = np.repeat(np.asarray(self.cfg.strides, np.float32), sizes)  # [A]
        results = []
        for i, meta in enumerate(metas):
            sf = _meta(meta, "scale_factor", i) if rescale else None
            q = out["quality"][i] if "quality" in out else None
            b, s, lab, idx = postprocess(out["boxes"][i], out["scores"][i], q, sizes, _meta(meta, "img_shape", i), sf,
                                         **settings, with_index=True)
            r = dict(boxes=torch.from_numpy(b), scores=torch.from_numpy(s), labels=torch.from_numpy(lab))
            if with_dist:
                r.update(dists=torch.from_numpy(out["dists"][i][idx]), strides=torch.from_numpy(anchor_strides[idx]))
            results.append(r)
        return results


def ort_predict_fn(model: GFL, shape: Sequence[int], threads: Optional[int] = None) -> Callable[[], list]:
    """For the benchmark suite: export ``model`` once (to a temporary file) and return a zero-argument
    callable running one batch-1 onnxruntime inference, decode and :func:`postprocess` included, on
    one random image of ``shape`` (h, w) padded to the config's ``size_divisor``, as
    ``gflnb.engine.benchmark.inference_setup`` makes it (``rescale=False``, as the torch rows run)."""
    from ..data.preprocess import pad_shape
    cfg = model.cfg
    ph, pw = pad_shape(shape, cfg.size_divisor)
    x = torch.randn(1, 3, ph, pw, generator=torch.Generator().manual_seed(0))
    meta = [dict(img_shape=tuple(shape), pad_shape=(ph, pw), scale_factor=(1.0, 1.0))]
    tmp = tempfile.TemporaryDirectory(prefix="gflnb-onnx-")
    det = OnnxDetector(export_onnx(model, Path(tmp.name) / "model.onnx"), threads)
    images = x.numpy()

    def run_once() -> list:
        return det.predict(images, meta, rescale=False)

    run_once.tmp = tmp  # the folder lives as long as the callable
    run_once.detector = det
    return run_once
