"""A user's own pictures: what ``gflnb predict`` and ``explore(model, "folder/")`` read.

:func:`list_inputs` turns command-line inputs (image files, folders, globs, videos) into an ordered
list of sources, each an image or a video, and the inputs it cannot use, each with one reason.
:class:`ImageFolder` is a folder of images without annotations, with the test-time part of
:class:`gflnb.data.coco.CocoDetection`'s interface (``records``, ``class_names``, ``cfg``,
``ds[i]``), so the code that walks a COCO set (``predict_images``, the explorer) walks it unchanged.
"""
from __future__ import annotations

import contextlib
import glob
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from ..config import GFLConfig
from .coco import Record
from .preprocess import load_image, prepare_image

# what OpenCV's VideoCapture reads (its FFmpeg backend), by file name
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
GLOB_CHARS = "*?["


@dataclass
class Source:
    path: str
    kind: str  # "image" or "video"


def _kind(path: str) -> str:
    return "video" if Path(path).suffix.lower() in VIDEO_SUFFIXES else "image"


def list_inputs(inputs: Iterable[Union[str, os.PathLike]]) -> tuple[list[Source], list[tuple[str, str]]]:
    """``inputs`` (files, folders, globs) -> ``(sources, skipped)``, each skipped entry ``(input, why)``.

    A folder gives its files (not hidden ones, not sub-folders) in name order, a glob its matches in
    name order; a file is a video by its suffix (:data:`VIDEO_SUFFIXES`), else an image. Whether an
    image decodes is found out when it is read (:func:`read_image`), so that a corrupt file costs its
    own line, not the run.
    """
    sources, skipped = [], []
    for item in inputs:
        s = str(item)
        if os.path.isdir(s):
            files = sorted(p for p in Path(s).iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                skipped.append((s, "empty folder"))
            sources += [Source(str(p), _kind(str(p))) for p in files]
        elif os.path.isfile(s):
            sources.append(Source(s, _kind(s)))
        elif any(c in s for c in GLOB_CHARS):
            files = sorted(p for p in glob.glob(s) if os.path.isfile(p))
            if not files:
                skipped.append((s, "no file matches this pattern"))
            sources += [Source(p, _kind(p)) for p in files]
        else:
            skipped.append((s, "no such file or folder"))
    return sources, skipped


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: libjpeg prints "Premature end of JPEG file" and the like there itself,
    past OpenCV's log level, and a bad file is to cost one line (ours), not two."""
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def read_image(path: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 BGR; ``ValueError`` with the reason when the file is not an image OpenCV reads."""
    import cv2
    if not cv2.haveImageReader(path):  # reads the signature only: a text file, an unknown format, a torn header
        raise ValueError("not an image OpenCV can read (unsupported format or corrupt header)")
    try:
        with _quiet_stderr():
            return load_image(path)
    except ValueError:
        raise ValueError("cannot decode image (corrupt or truncated)") from None


def video_frames(path: str) -> Iterator[np.ndarray]:
    """A video's frames in order, ``[H, W, 3]`` uint8 BGR; ``ValueError`` when OpenCV cannot open it."""
    import cv2
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ValueError("cannot open video (corrupt, or a codec OpenCV lacks)")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield frame
    finally:
        cap.release()


def video_length(path: str) -> int:
    """The frame count the container states (0 when unknown or unreadable)."""
    import cv2
    cap = cv2.VideoCapture(path)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    return max(n, 0)


def video_fps(path: str, default: float = 25.0) -> float:
    import cv2
    cap = cv2.VideoCapture(path)
    fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    cap.release()
    return float(fps) if fps and fps > 0 else default


class ImageFolder(torch.utils.data.Dataset):
    """The images of folders, globs or files (:func:`list_inputs`), without annotations.

    Files that are not readable images (and videos) are left out with one warning each. ``records``
    carry no boxes; ``ds[i]`` is the test-time sample ``CocoDetection`` gives (keep-ratio resize to
    ``cfg.img_scale``, no flip).
    """

    def __init__(self, inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], cfg: GFLConfig,
                 class_names: Optional[Sequence[str]] = None):
        from PIL import Image
        from .coco import class_names_for
        items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        sources, skipped = list_inputs(items)
        self.cfg, self.train = cfg, False
        self.class_names = list(class_names) if class_names is not None else class_names_for(cfg.num_classes)
        self.records: list[Record] = []
        for src in sources:
            if src.kind != "image":
                skipped.append((src.path, "a video (the explorer steps through images)"))
                continue
            try:
                import cv2
                if not cv2.haveImageReader(src.path):
                    raise ValueError("not an image OpenCV can read")
                with Image.open(src.path) as im:  # the header alone: sizes without decoding every image
                    w, h = im.size
            except Exception as e:  # noqa: BLE001  (PIL raises its own errors for broken headers)
                skipped.append((src.path, str(e).splitlines()[0] if str(e) else type(e).__name__))
                continue
            empty = np.zeros((0, 4), np.float32)
            self.records.append(Record(len(self.records) + 1, src.path, int(w), int(h), empty,
                                       np.zeros(0, np.int64), np.zeros(0, np.int64)))
        for path, why in skipped:
            warnings.warn(f"skipped {path}: {why}")
        if not self.records:
            raise ValueError(f"no readable images in {', '.join(map(str, items))}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        img, meta = prepare_image(read_image(r.path), self.cfg.img_scale)
        meta.update(img_id=r.img_id, flip=False)
        return dict(img=img, boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64), meta=meta)
