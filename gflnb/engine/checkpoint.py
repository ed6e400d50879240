"""Checkpoints: gflnb's own files and mmdetection model-zoo files, loaded safely.

Files are read with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
Writes go to a temporary file that is renamed into place, so a crash never leaves a torn file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import nn

from ..files import atomic_path

# A buffer whose value is fixed by reg_max; zoo files may or may not carry it.
OPTIONAL_KEYS = ("bbox_head.integral.project",)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model."""


def read_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu") -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p}: no such file")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()
        reason = next((m for m in msg if "Unsupported" in m or "global" in m.lower()), msg[0] if msg else "")
        raise CheckpointError(f"checkpoint {p}: cannot be loaded safely ({type(e).__name__}: {reason[:300]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {p}: expected a dict, got {type(obj).__name__}")
    return obj


def extract_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of an mmdet (``state_dict``), gflnb (``model``) or bare checkpoint."""
    sd = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(sd, Mapping):
        raise CheckpointError("checkpoint has no state_dict")
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):  # saved from DistributedDataParallel
            k = k[len("module."):]
        out[k] = v
    return out


def load_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
                    strict: bool = True) -> dict:
    """Load weights into ``model``; returns the checkpoint's ``meta`` (or ``{}``).

    Accepts a path or an already loaded object; mmdet's ``{'state_dict', 'meta'}`` as it is,
    with or without ``bbox_head.integral.project`` (its value is ignored: it is fixed by
    ``reg_max``). A mismatch raises :class:`CheckpointError` naming the keys.
    """
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    sd = extract_state_dict(obj)
    own = model.state_dict()
    for k in OPTIONAL_KEYS:
        if k in own:
            sd[k] = own[k]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)]
    if wrong or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                         + (" ..." if len(unexpected) > 8 else ""))
        if wrong:
            parts.append(f"shape mismatch ({len(wrong)}): {'; '.join(wrong[:5])}" + (" ..." if len(wrong) > 5 else ""))
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    meta = obj.get("meta", {}) if isinstance(obj, Mapping) else {}
    return dict(meta) if isinstance(meta, Mapping) else {}


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(model: nn.Module, path: Union[str, os.PathLike], meta: Mapping[str, Any] | None = None,
                    **extra: Any) -> None:
    """gflnb's format: ``{'state_dict', 'meta', ...extra}`` (mmdet-compatible at the top level)."""
    m = model.module if hasattr(model, "module") else model
    atomic_save(dict(state_dict=m.state_dict(), meta=dict(meta or {}), **extra), path)


def model_from_checkpoint(checkpoint: Union[str, os.PathLike, Mapping[str, Any]], config: Any = None,
                          **overrides: Any) -> tuple[nn.Module, dict]:
    """An eval-mode GFL holding a checkpoint's weights, and the checkpoint's ``meta``.

    gflnb's own files carry their config (classes and every field): ``config``, when given, must name
    the preset they were trained from. mmdetection's (model-zoo) files carry none: ``config`` (a
    preset name or a config) says what they are. Either way a checkpoint of another architecture
    fails in :func:`load_checkpoint` with one :class:`CheckpointError` naming the keys.
    """
    from ..config import from_dict, get_config
    from ..model.detector import GFL
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    meta = obj.get("meta")
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    saved = meta.get("config")
    where = f"checkpoint {checkpoint}" if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint"
    if isinstance(saved, Mapping):
        cfg = from_dict(dict(saved))
        if config is not None:
            name = config if isinstance(config, str) else config.name
            get_config(name)  # an unknown preset fails here, with the list of known ones
            if cfg.name != name:
                raise CheckpointError(f"{where} was trained from preset {cfg.name!r}, not {name!r}")
        cfg = from_dict({**cfg.to_dict(), "pretrained_backbone": False, **overrides})
    elif config is None:
        raise CheckpointError(f"{where} carries no config (a model-zoo file?): name its preset")
    else:
        cfg = get_config(config, pretrained_backbone=False, **overrides)
    model = GFL(cfg)
    load_checkpoint(model, obj)
    return model.eval(), meta
