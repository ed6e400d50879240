"""Distributed helpers that are no-ops in a single process."""
from __future__ import annotations

import torch
import torch.distributed as td
from torch import Tensor


def is_dist() -> bool:
    return td.is_available() and td.is_initialized()


def world_size() -> int:
    return td.get_world_size() if is_dist() else 1


def rank() -> int:
    return td.get_rank() if is_dist() else 0


def reduce_mean(t: Tensor) -> Tensor:
    """Mean over processes (mmdet's ``reduce_mean``); the identity without torch.distributed."""
    if not is_dist():
        return t
    t = t.clone().float()
    td.all_reduce(t.div_(world_size()), op=td.ReduceOp.SUM)
    return t
