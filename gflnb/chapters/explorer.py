"""Step through a dataset and look at the four learned distributions of any detection.

``explore(model, dataset)`` in JupyterLab gives an ipywidgets view: an image with its detections
(click one, or pick it from the list), a score-threshold slider, and a switch between choosing among
the predicted boxes and among the gt boxes (each shown through the detection chapter 5 matches to it). The
selected detection is drawn with :func:`gflnb.chapters.gallery.draw_edge_distributions`. It works on any
checkpoint and any COCO-format dataset; the synthetic set's recorded edge ambiguity is shown when
the annotations have it. :meth:`Explorer.render` draws the same view as a static figure (the book
has no kernel to run widgets).

``explore(model, "folder/")`` (a folder, a glob, or a list of image files) steps through a user's own
pictures: no annotations, so no gt is drawn and only the predicted boxes can be chosen
(:class:`gflnb.data.folder.ImageFolder`).
"""
from __future__ import annotations

import io
import os
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure

from .analysis import best_match, predict_images
from ..data.coco import CocoDetection
from ..data.folder import ImageFolder
from ..model.detector import GFL
from .gallery import draw_edge_distributions
from ..data.preprocess import load_image

MODES = ("predicted", "gt")
OVERVIEW_WIDTH = 520  # px: the explorer's image, upscaled so that small objects can be clicked


class Explorer:
    """The explorer's state and drawing; :meth:`widget` wires it to ipywidgets.

    ``position`` indexes ``images`` (dataset indices), ``mode`` is ``"predicted"`` or ``"gt"``,
    ``selected`` indexes :meth:`items`.
    """

    def __init__(self, model: GFL, dataset: Union[CocoDetection, ImageFolder, str, os.PathLike, Sequence[str]],
                 device: str = "cpu", score_thr: float = 0.3, images: Optional[Sequence[int]] = None,
                 iou_match: float = 0.5, class_names: Optional[Sequence[str]] = None):
        if hasattr(model, "detect"):  # a gflnb.Detector: its torch model and class names
            if model.model is None:
                raise ValueError("the explorer needs a torch model: this Detector runs an ONNX file")
            class_names = class_names if class_names is not None else model.class_names
            model = model.model
        if isinstance(dataset, (str, os.PathLike, list, tuple)):  # a user's own pictures, without annotations
            dataset = ImageFolder(dataset, model.cfg, class_names)
        if not len(dataset):
            raise ValueError("the dataset has no images")
        self.model = model.inference_net(device)  # built once for all the views
        if self.model.cfg.box == "dirac":
            raise ValueError("this model regresses boxes directly (box='dirac'): it has no distributions to explore")
        self.ds, self.device, self.iou_match = dataset, device, iou_match
        self.images = list(range(len(dataset))) if images is None else [int(i) for i in images]
        bad = [i for i in self.images if not 0 <= i < len(dataset)]
        if bad:
            raise IndexError(f"image indices {bad[:5]} are outside the dataset (0..{len(dataset) - 1})")
        self.has_gt = not isinstance(dataset, ImageFolder)  # a folder of pictures: no gt to draw or choose
        self.position, self.score_thr, self.mode, self.selected = 0, float(score_thr), "predicted", 0
        self._pred: dict[int, dict] = {}
        self._items: list[dict] = []
        self._items_key: Optional[tuple] = None
        self._controls: dict[str, Any] = {}

    # ------------------------------------------------------------------ state
    @property
    def index(self) -> int:
        return self.images[self.position]

    def prediction(self) -> dict:
        """The current image's detections with distributions (boxes in original pixels) and
        ``iou [G, D]``, each gt's IoU with each detection of its class (0 across classes); cached."""
        i = self.index
        if i not in self._pred:
            from torchvision.ops import box_iou
            p = predict_images(self.model, self.ds, [i], device=self.device)[0]
            rec = self.ds.records[i]
            gts, labels = torch.from_numpy(rec.boxes), torch.from_numpy(rec.labels)
            iou = box_iou(gts.to(p["boxes"].dtype), p["boxes"])  # [G, D]
            iou[labels[:, None] != p["labels"][None, :]] = 0
            self._pred[i] = dict(p, iou=iou)
        return self._pred[i]

    def items(self) -> list[dict]:
        """What can be selected now: detections at or above the threshold, highest score first, each
        with the gt it overlaps most (mode ``predicted``); or the gt boxes, each with the detection
        chapter 5 matches to it, the highest-scoring one of its class at IoU >= ``iou_match`` (mode
        ``gt``). Cached per (image, mode, threshold): drawing and clicking ask for it repeatedly."""
        key = (self.index, self.mode, self.score_thr)
        if self._items_key != key:
            self._items, self._items_key = self._build_items(), key
        return self._items

    def _build_items(self) -> list[dict]:
        p, rec = self.prediction(), self.ds.records[self.index]
        names, iou = self.ds.class_names, p["iou"]
        out = []
        if self.mode == "predicted":
            keep = (p["scores"] >= self.score_thr).nonzero().view(-1)
            for j in keep[p["scores"][keep].argsort(descending=True)].tolist():
                g = int(iou[:, j].argmax()) if len(iou) and float(iou[:, j].max()) > 0 else None
                out.append(dict(det=j, gt=g, box=p["boxes"][j].numpy(),
                                label=f"{names[int(p['labels'][j])]} {float(p['scores'][j]):.2f}"))
        else:
            for g in range(len(rec.boxes)):
                j = best_match(iou[g], p["scores"], self.iou_match) if iou.shape[1] else None
                score = f"{float(p['scores'][j]):.2f}" if j is not None else f"no detection at IoU >= {self.iou_match:g}"
                out.append(dict(det=j, gt=g, box=rec.boxes[g], label=f"gt {names[int(rec.labels[g])]} ({score})"))
        return out

    def seek(self, start: int = 0) -> int:
        """Move to the first image from position ``start`` on (wrapping) that has something to select."""
        for k in range(len(self.images)):
            self.position, self.selected = (start + k) % len(self.images), 0
            if self.items():
                break
        self._refresh()
        return self.position

    def select_at(self, x: float, y: float) -> Optional[int]:
        """Select the smallest item whose box contains image point (x, y); returns its index or None."""
        hits = [(float((b[2] - b[0]) * (b[3] - b[1])), k) for k, it in enumerate(self.items())
                for b in [it["box"]] if b[0] <= x <= b[2] and b[1] <= y <= b[3]]
        if not hits:
            return None
        self.selected = min(hits)[1]
        self._refresh()
        return self.selected

    def detail(self) -> Optional[dict]:
        """The selected item as keyword arguments of :func:`gflnb.chapters.gallery.draw_edge_distributions`."""
        items = self.items()
        if not items:
            return None
        it = items[min(self.selected, len(items) - 1)]
        if it["det"] is None:
            return None
        p, rec = self.prediction(), self.ds.records[self.index]
        j, g = it["det"], it["gt"]
        amb = None
        if g is not None:
            amb = self.ds.coco.anns[int(rec.ann_ids[g])].get("edge_ambiguity")
        return dict(img_bgr=load_image(rec.path), box=p["boxes"][j].numpy(), dist=p["dists"][j].numpy(),
                    stride=float(p["strides"][j]), scale=p["meta"]["scale_factor"],
                    gt=None if g is None else rec.boxes[g], ambiguity=amb, title=it["label"])

    # ------------------------------------------------------------------ drawing
    def overview(self) -> np.ndarray:
        """The image (RGB, upscaled to OVERVIEW_WIDTH) with numbered items; the selected one thick."""
        img = load_image(self.ds.records[self.index].path)
        f = OVERVIEW_WIDTH / img.shape[1]
        img = cv2.resize(img, (OVERVIEW_WIDTH, int(round(img.shape[0] * f))), interpolation=cv2.INTER_LINEAR)
        items = self.items()
        chosen = min(self.selected, len(items) - 1)
        # the selected box last, so that it is drawn over the others
        for k in [k for k in range(len(items)) if k != chosen] + ([chosen] if items else []):
            b = (np.asarray(items[k]["box"]) * f).round().astype(int)
            sel = k == chosen
            col = (0, 215, 255) if sel else ((80, 220, 80) if self.mode == "predicted" else (255, 255, 255))  # BGR
            cv2.rectangle(img, (b[0], b[1]), (b[2], b[3]), (0, 0, 0), 5 if sel else 3)
            cv2.rectangle(img, (b[0], b[1]), (b[2], b[3]), col, 3 if sel else 1)
            org = (b[0] + 4, b[1] + 18)
            cv2.putText(img, str(k), org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 4, cv2.LINE_AA)
            cv2.putText(img, str(k), org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, col, 2 if sel else 1, cv2.LINE_AA)
        return img[..., ::-1]

    def detail_figure(self, size: float = 4.6) -> Figure:
        fig = Figure(figsize=(size, size))
        d = self.detail()
        if d is None:
            fig.text(0.5, 0.5, "nothing selected: no detection above the threshold\n(or the gt box has none)",
                     ha="center", va="center")
            return fig
        draw_edge_distributions(fig, fig.add_gridspec(1, 1, left=0.02, right=0.98, top=0.93, bottom=0.02)[0], **d)
        return fig

    def render(self, width: float = 10.0):
        """The explorer's current view as one static matplotlib figure (for the book)."""
        import matplotlib.pyplot as plt
        fig = plt.figure(figsize=(width, width * 0.48))
        gs = fig.add_gridspec(1, 2, width_ratios=(1.15, 1), wspace=0.06)
        ax = fig.add_subplot(gs[0])
        ax.imshow(self.overview())
        ax.set_axis_off()
        rec = self.ds.records[self.index]
        ax.set_title(f"image {rec.img_id}: {len(self.items())} {self.mode} boxes at score >= {self.score_thr:.2f}",
                     fontsize=10, loc="left")
        d = self.detail()
        if d is not None:
            draw_edge_distributions(fig, gs[1], **d)
        return fig

    # ------------------------------------------------------------------ widgets
    def _png(self) -> bytes:
        fig = self.detail_figure()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()

    def _refresh(self) -> None:
        c = self._controls
        if not c:
            return
        items = self.items()
        self.selected = min(self.selected, max(len(items) - 1, 0))
        c["list"].unobserve(self._on_list, "index")
        c["list"].options = [f"{k}: {it['label']}" for k, it in enumerate(items)]
        c["list"].index = self.selected if items else None
        c["list"].observe(self._on_list, "index")
        ok, overview = cv2.imencode(".png", self.overview()[..., ::-1])
        c["image"].value = overview.tobytes()
        c["detail"].value = self._png()
        rec = self.ds.records[self.index]
        c["status"].value = (f"image {self.position + 1} / {len(self.images)} (id {rec.img_id}), "
                             f"{len(items)} {self.mode} boxes; selected: "
                             + (f"{self.selected}: {items[self.selected]['label']}" if items else "none"))

    def _on_list(self, change) -> None:
        if change["new"] is not None:
            self.selected = int(change["new"])
            self._refresh()

    def widget(self):
        """The ipywidgets view (display it, or return it from a cell)."""
        import ipywidgets as W
        from ipyevents import Event
        c = self._controls
        c["image"] = W.Image(format="png", layout=W.Layout(width=f"{OVERVIEW_WIDTH}px"))
        c["detail"] = W.Image(format="png", layout=W.Layout(width="420px"))
        c["list"] = W.Select(options=[], rows=10, description="boxes", layout=W.Layout(width="330px"))
        c["threshold"] = W.FloatSlider(value=self.score_thr, min=0.05, max=0.95, step=0.05, description="score >=",
                                       continuous_update=False)
        c["mode"] = W.ToggleButtons(options=list(MODES) if self.has_gt else ["predicted"], value=self.mode, description="choose among",
                                    tooltips=["the detections", "the gt boxes, via their best detection"])
        c["image_no"] = W.IntSlider(value=self.position, min=0, max=len(self.images) - 1, description="image",
                                    continuous_update=False)
        c["prev"], c["next"] = W.Button(description="previous"), W.Button(description="next")
        c["status"] = W.HTML()

        def on_image(change):
            self.position, self.selected = int(change["new"]), 0
            self._refresh()

        def on_threshold(change):
            self.score_thr = float(change["new"])
            self._refresh()

        def on_mode(change):
            self.mode, self.selected = change["new"], 0
            self._refresh()

        def step(k):
            c["image_no"].value = (c["image_no"].value + k) % len(self.images)

        def on_click(event):
            f = OVERVIEW_WIDTH / self.ds.records[self.index].width
            self.select_at(event["dataX"] / f, event["dataY"] / f)

        c["image_no"].observe(on_image, "value")
        c["threshold"].observe(on_threshold, "value")
        c["mode"].observe(on_mode, "value")
        c["list"].observe(self._on_list, "index")
        c["prev"].on_click(lambda _: step(-1))
        c["next"].on_click(lambda _: step(1))
        self._events = Event(source=c["image"], watched_events=["click"])
        self._events.on_dom_event(on_click)
        self._refresh()
        controls = W.HBox([c["prev"], c["next"], c["image_no"], c["threshold"]])
        return W.VBox([controls, c["mode"], W.HBox([c["image"], W.VBox([c["list"], c["detail"]])]), c["status"]])

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget())


def explore(model: Union[GFL, Any], dataset: Union[CocoDetection, ImageFolder, str, os.PathLike, Sequence[str]],
            device: str = "cpu", score_thr: float = 0.3, images: Optional[Sequence[int]] = None,
            class_names: Optional[Sequence[str]] = None) -> Explorer:
    """An :class:`Explorer` on ``model`` (a GFL, or a ``gflnb.Detector``) and ``dataset`` (a COCO set, or
    a folder, glob or list of image files without annotations); shown as widgets when it is a cell's value."""
    return Explorer(model, dataset, device=device, score_thr=score_thr, images=images, class_names=class_names)
