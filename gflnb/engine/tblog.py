"""TensorBoard scalars of a training run, beside its ``log.jsonl``: a sink that mirrors the log.

``log.jsonl`` stays the record; this writes the same numbers where detection researchers read
runs (detectron2, mmengine and nanodet all write TensorBoard). Every record the log receives is
forwarded here, so the scalars are the log's values by construction (stored as float32, as
TensorBoard stores every scalar), at ``step`` = the global iteration:

  loss/loss, loss/loss_cls, ...   each loss term and their total (the log's ``loss``)
  train/lr                        the learning rate of the step
  time/step_time, time/data_time, time/imgs_per_s
  eval/AP, eval/AP50, ... eval/APl every evaluation (``eval_every`` ones and the final one)

It uses ``torch.utils.tensorboard.SummaryWriter``: it comes with the pinned torch, so the only
package it adds is ``tensorboard`` itself, which the UI and the tests' ``EventAccumulator``
need anyway (tensorboardX would add a second event writer, and its own protobuf, for nothing).

A sink never changes training and never stops it: without the ``tensorboard`` package it warns
once and the run goes on without it, and a write that fails warns once and turns the sink off.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

EVENT_GLOB = "events.out.tfevents.*"
# log.jsonl's per-iteration fields that are not scalars to plot (the x axis, and the epoch number)
_NOT_SCALARS = ("iter", "epoch")


def scalars(rec: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard tags and values of one ``log.jsonl`` record (none for events such as a
    skipped batch): an iteration's losses, lr and timings, or an evaluation's APs."""
    event = rec.get("event")
    if event == "eval":
        return {f"eval/{k}": float(v) for k, v in rec.items()
                if k not in _NOT_SCALARS and k != "event" and isinstance(v, (int, float))}
    if event is not None or "loss" not in rec:
        return {}
    out = {}
    for k, v in rec.items():
        if k in _NOT_SCALARS or not isinstance(v, (int, float)):
            continue
        group = "loss" if k.startswith("loss") else "train" if k == "lr" else "time"
        out[f"{group}/{k}"] = float(v)
    return out


class TensorBoardSink:
    """Writes :func:`scalars` of each record to event files in ``log_dir`` (main process only)."""

    def __init__(self, log_dir: Path, writer: Any):
        self.log_dir = log_dir
        self.writer: Any = writer  # None once a failure turned the sink off

    def _guard(self, what: str, fn, *args) -> None:
        if self.writer is None:
            return
        try:
            fn(*args)
        except Exception as e:  # a sink never breaks training: warn once, then stop writing
            warnings.warn(f"TensorBoard: {what} failed ({type(e).__name__}: {e}); log.jsonl goes on without it")
            self.writer = None

    def write(self, rec: dict[str, Any]) -> None:
        step = int(rec.get("iter", 0))

        def add():
            for tag, v in scalars(rec).items():
                self.writer.add_scalar(tag, v, step)
        self._guard("writing", add)

    def flush(self) -> None:
        self._guard("flushing", lambda: self.writer.flush())

    def close(self) -> None:
        self._guard("closing", lambda: self.writer.close())
        self.writer = None


def open_tensorboard(work: Path, resume_iter: Optional[int] = None) -> Optional[TensorBoardSink]:
    """A sink writing into the work dir, or None (with a one-line warning) without ``tensorboard``.

    Like ``log.jsonl``: a new run (``resume_iter`` None) removes an earlier run's event files, and a
    resumed one hides what a killed run wrote past its checkpoint (``purge_step``).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("no TensorBoard scalars: the tensorboard package is missing (pip install -e '.[track]'); "
                      "training goes on, log.jsonl has every number")
        return None
    try:
        if resume_iter is None:
            for f in work.glob(EVENT_GLOB):
                f.unlink()
        # flush_secs: the writer's thread also flushes every 30 s between the epoch ends' flushes
        writer = SummaryWriter(str(work), purge_step=None if resume_iter is None else resume_iter + 1,
                               flush_secs=30)
    except Exception as e:
        warnings.warn(f"no TensorBoard scalars: cannot open an event file in {work} ({e}); training goes on")
        return None
    return TensorBoardSink(work, writer)
