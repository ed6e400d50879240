"""One typed configuration object per experiment; presets are small overrides of the base.

The base is mmdetection's ``gfl_r50_fpn_1x_coco`` (GFL_SPEC sections 2-7). Field names follow
mmdetection where it has one (``depth``, ``stage_with_dcn``, ``frozen_stages``, ``in_channels``,
``feat_channels``, ``reg_max``, ...), so any field can be overridden by name::

    cfg = get_config("gfl_r50_fpn_1x_coco", num_classes=3, stage_with_dcn=(False, True, True, True))
"""
from __future__ import annotations

import ast
import dataclasses
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional, Union


class ConfigError(ValueError):
    """An unknown preset or field, or a value of the wrong type."""


# The paper's ablations (GFL_SPEC / PAPER_TABLES): the values of ``quality`` (Table 1a, plus
# GFLv2's DGQP) and ``box`` (Table 2a). gflnb.model.quality and gflnb.model.box_repr implement one each.
QUALITIES = ("none", "centerness", "iou", "centerness_guided", "iou_guided", "qfl", "dgqp")
BOXES = ("dirac", "gaussian", "integral", "dfl")
BINNED_BOXES = ("integral", "dfl")  # the boxes with a distribution over bins (DGQP, bin_interval)


@dataclass(frozen=True)
class GFLConfig:
    name: str = "gfl_r50_fpn_1x_coco"

    # ---- backbone (mmdet ResNet / ResNeXt)
    depth: int = 50
    groups: int = 1
    base_width: int = 64  # width per group of the bottleneck 3x3 (ResNeXt: 4)
    base_channels: int = 64  # stem width; 64 is torchvision's ResNet
    stage_with_dcn: tuple[bool, ...] = (False, False, False, False)
    frozen_stages: int = 1
    norm_eval: bool = True
    # True: ImageNet weights (torchvision V1; open-mmlab's for ResNeXt-101 32x4d), a str: a local
    # file, False: random init. Loaded by GFL.init_weights(), never by build_model().
    pretrained_backbone: Union[bool, str] = True

    # ---- neck (mmdet FPN)
    in_channels: tuple[int, ...] = (256, 512, 1024, 2048)
    out_channels: int = 256
    start_level: int = 1
    num_outs: int = 5

    # ---- head (GFLHead)
    num_classes: int = 80
    feat_channels: int = 256
    stacked_convs: int = 4
    norm_num_groups: int = 32
    reg_max: int = 16
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    octave_base_scale: int = 8
    topk: int = 9  # ATSS candidates per level
    qfl_beta: float = 2.0
    loss_cls_weight: float = 1.0
    loss_bbox_weight: float = 2.0
    loss_dfl_weight: float = 0.25
    # ---- ablated variants (defaults: GFL). Table 3's QFL x DFL grid is quality in {centerness, qfl}
    # x box in {dirac, dfl}; its "neither" row is ATSS as published (centerness branch, Dirac box).
    quality: str = "qfl"  # none | centerness | iou | centerness_guided | iou_guided | qfl | dgqp (gflnb/model/quality.py)
    box: str = "dfl"  # dirac | gaussian | integral | dfl (see gflnb/model/box_repr.py)
    bin_interval: float = 1.0  # Table 2c: width of the distribution's bins, in strides (integral/dfl)
    loss_quality_weight: float = 1.0  # BCE of a separate centerness/IoU branch (ATSS: 1.0)
    focal_alpha: float = 0.25  # focal loss of the variants without a joint score (RetinaNet/ATSS)
    focal_gamma: float = 2.0
    dgqp_topk: int = 4  # GFLv2: top-k bin probabilities per side (+ their mean) feed the DGQP
    dgqp_channels: int = 64
    # GFLv2: True keeps the DGQP's parameters in the graph of the box-loss weights (gflnb before issue
    # 18, which collapses: the box losses then push the quality to 0); GFocalV2 detaches them (False)
    dgqp_weight_grad: bool = False

    # ---- test
    score_thr: float = 0.05
    nms_pre: int = 1000
    iou_threshold: float = 0.6
    max_per_img: int = 100
    min_bbox_size: float = 0

    # ---- data pipeline
    img_scale: tuple[int, int] = (1333, 800)  # (long cap, short cap), keep ratio
    ms_short_range: Optional[tuple[int, int]] = None  # ms-2x: short side drawn from [480, 800]
    flip_prob: float = 0.5
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisor: int = 32
    filter_empty_gt: bool = True
    min_size: int = 32  # training images with a side below this are skipped

    # ---- optimisation
    optimizer: str = "sgd"  # or "adamw"
    lr: float = 0.01  # at base_batch_size; scaled linearly with the total batch
    base_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    epochs: int = 12
    milestones: tuple[int, ...] = (8, 11)  # lr x gamma at the end of these epochs
    gamma: float = 0.1
    batch_size: int = 2  # images per process
    num_workers: int = 2
    grad_clip: Optional[float] = None
    # Exponential moving average of the weights (0: off); the decay ramps up as
    # ema_decay * (1 - exp(-updates / ema_tau)) so early, poor weights are forgotten quickly.
    ema_decay: float = 0.0
    ema_tau: float = 2000.0
    amp: bool = True  # fp16 autocast + GradScaler when training on CUDA
    # bf16 autocast when training on a CPU with native bf16 dot products (AVX512-BF16 or AMX) and
    # GFLNB_NATIVE_ISA=1, where it measured 1.35x faster for the demo; fp32 (with a warning) elsewhere.
    # Off by default: its numbers differ from fp32's and exist on some machines only.
    cpu_amp: bool = False
    # NHWC weights and activations, for training and inference (faster with oneDNN on CPU). gflnb's
    # inference path (gflnb.model.fuse.inference_model) uses NHWC on CPU whatever this says.
    channels_last: bool = False
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Presets: only what differs from the base above (GFL_SPEC section 7).
_MS2X = dict(epochs=24, milestones=(16, 22), ms_short_range=(480, 800))
PRESETS: dict[str, dict[str, Any]] = {
    "gfl_r50_fpn_1x_coco": {},
    "gfl_r50_fpn_ms-2x_coco": dict(_MS2X),
    "gfl_r101_fpn_ms-2x_coco": dict(_MS2X, depth=101),
    "gfl_r101-dconv-c3-c5_fpn_ms-2x_coco": dict(_MS2X, depth=101, stage_with_dcn=(False, True, True, True)),
    "gfl_x101-32x4d_fpn_ms-2x_coco": dict(_MS2X, depth=101, groups=32, base_width=4),
    "gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco": dict(_MS2X, depth=101, groups=32, base_width=4,
                                                     stage_with_dcn=(False, False, True, True)),
    "gfl_r18_fpn_1x_coco": dict(depth=18, in_channels=(64, 128, 256, 512)),
    # A small GFL trained from scratch on 2 CPU cores: 12 epochs of 1,000 synthetic images of
    # 256-320 px (1,500 iterations; ResNet-18 at 1/4 width, 3 FPN levels and a 2-conv head of 32
    # channels, anchors of 4x the stride, AdamW), in fp32 and NHWC on every machine, so its AP is the
    # same everywhere (gflnb/numerics/portable.py). Epochs, not minutes: 12 keep `make book` within 15 minutes
    # on the slowest machine of this project's kind (Zen 3, AVX2 only). How the shape was found, under
    # a 5-minute budget on a faster machine: FPN/head 64 at 13 epochs gave 49.4 AP, anchors 4x the
    # stride instead of 8x 52.6 (octave 5: 52.2; reg_max 7: 49.7; lr 4e-3: 50.6; weight EMA: -1.1),
    # then 15 epochs 55.4, FPN/head 48 at 17 epochs 56.9, FPN/head 32 at 21 epochs 58.5; 25 epochs
    # in bf16 59.5 (benchmarks/results/demo.md). NHWC: 166 against 209 ms a step (AVX-512 kernels),
    # 181 against 213 (AVX2). bf16 (cpu_amp) is opt-in: it needs the CPU's own kernels.
    "gfl_cpu_demo": dict(
        depth=18, base_channels=16, in_channels=(16, 32, 64, 128), out_channels=32, num_outs=3,
        strides=(8, 16, 32), octave_base_scale=4, feat_channels=32, stacked_convs=2, norm_num_groups=16,
        frozen_stages=-1, norm_eval=False, pretrained_backbone=False, num_classes=4,
        img_scale=(320, 320), min_size=8, optimizer="adamw", lr=2e-3, base_batch_size=8,
        weight_decay=0.05, warmup_iters=100, warmup_ratio=0.01, epochs=12, milestones=(11,),
        batch_size=8, num_workers=0, grad_clip=35.0, channels_last=True),
}

@dataclass(frozen=True)
class HeadConfig:
    """The head's settings beyond the six arguments of ``GFLHead(num_classes, in_channels,
    feat_channels, stacked_convs, reg_max, strides)``: its GroupNorm, ATSS's anchors, the loss weights
    and the paper's ablated variants (``quality``, ``box``). The fields and their defaults are
    :class:`GFLConfig`'s (mmdetection's GFL); :meth:`from_config` reads a config's."""
    norm_num_groups: int = GFLConfig.norm_num_groups
    octave_base_scale: int = GFLConfig.octave_base_scale
    topk: int = GFLConfig.topk
    qfl_beta: float = GFLConfig.qfl_beta
    loss_cls_weight: float = GFLConfig.loss_cls_weight
    loss_bbox_weight: float = GFLConfig.loss_bbox_weight
    loss_dfl_weight: float = GFLConfig.loss_dfl_weight
    quality: str = GFLConfig.quality
    box: str = GFLConfig.box
    bin_interval: float = GFLConfig.bin_interval
    loss_quality_weight: float = GFLConfig.loss_quality_weight
    focal_alpha: float = GFLConfig.focal_alpha
    focal_gamma: float = GFLConfig.focal_gamma
    dgqp_topk: int = GFLConfig.dgqp_topk
    dgqp_channels: int = GFLConfig.dgqp_channels
    dgqp_weight_grad: bool = GFLConfig.dgqp_weight_grad

    @classmethod
    def from_config(cls, cfg: GFLConfig) -> "HeadConfig":
        """The head's fields of ``cfg``."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


_FIELDS = {f.name: f for f in fields(GFLConfig)}
_HINTS = typing.get_type_hints(GFLConfig)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check (and for tuples, convert) a value against a field's type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {name!r} expects a tuple, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(name, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config field {name!r} expects {len(args)} values, got {value!r}")
        return tuple(_coerce(name, v, a) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config field {name!r} expects a bool, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config field {name!r} expects an int, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config field {name!r} expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config field {name!r} expects a string, got {value!r}")
    return value


def validate(cfg: GFLConfig) -> GFLConfig:
    """Cross-field checks that a type alone cannot express."""
    def bad(msg):
        raise ConfigError(f"config {cfg.name!r}: {msg}")
    if cfg.depth not in (18, 34, 50, 101, 152):
        bad(f"depth must be one of 18, 34, 50, 101, 152, got {cfg.depth}")
    if len(cfg.stage_with_dcn) != 4:
        bad(f"stage_with_dcn needs 4 entries, got {cfg.stage_with_dcn}")
    if cfg.depth < 50 and any(cfg.stage_with_dcn):
        bad("deformable convs need a Bottleneck ResNet (depth >= 50)")
    if cfg.num_classes < 1:
        bad(f"num_classes must be >= 1, got {cfg.num_classes}")
    if len(cfg.strides) != cfg.num_outs:
        bad(f"one stride per FPN output is needed: {len(cfg.strides)} strides for num_outs={cfg.num_outs}")
    if cfg.reg_max < 1:
        bad(f"reg_max must be >= 1, got {cfg.reg_max}")
    if cfg.quality not in QUALITIES:
        bad(f"quality must be one of {', '.join(map(repr, QUALITIES))}, got {cfg.quality!r}")
    if cfg.box not in BOXES:
        bad(f"box must be one of {', '.join(map(repr, BOXES))}, got {cfg.box!r}")
    if cfg.quality == "dgqp" and cfg.box not in BINNED_BOXES:
        bad(f"quality 'dgqp' reads the box distribution: it needs box 'integral' or 'dfl', not {cfg.box!r}")
    if not cfg.bin_interval > 0:
        bad(f"bin_interval must be > 0, got {cfg.bin_interval}")
    if cfg.bin_interval != 1 and cfg.box not in BINNED_BOXES:
        bad(f"bin_interval is the width of a distribution's bins; box {cfg.box!r} has none")
    if cfg.dgqp_weight_grad and cfg.quality != "dgqp":
        bad(f"dgqp_weight_grad is an option of quality 'dgqp', not {cfg.quality!r}")
    if cfg.quality == "dgqp" and not 1 <= cfg.dgqp_topk <= cfg.reg_max + 1:
        bad(f"dgqp_topk must be in [1, reg_max+1={cfg.reg_max + 1}], got {cfg.dgqp_topk}")
    if cfg.qfl_beta < 0 or cfg.focal_gamma < 0 or not 0 <= cfg.focal_alpha <= 1:
        bad(f"qfl_beta and focal_gamma must be >= 0 and focal_alpha in [0, 1], got {cfg.qfl_beta}, "
            f"{cfg.focal_gamma} and {cfg.focal_alpha}")
    if cfg.out_channels % cfg.norm_num_groups or cfg.feat_channels % cfg.norm_num_groups:
        bad(f"norm_num_groups={cfg.norm_num_groups} must divide out_channels and feat_channels")
    if not 0 <= cfg.score_thr < 1:
        bad(f"score_thr must be in [0, 1), got {cfg.score_thr}")
    if not 0 < cfg.iou_threshold <= 1:
        bad(f"iou_threshold must be in (0, 1], got {cfg.iou_threshold}")
    if cfg.optimizer not in ("sgd", "adamw"):
        bad(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
    if not 0 <= cfg.ema_decay < 1 or cfg.ema_tau <= 0:
        bad(f"ema_decay must be in [0, 1) and ema_tau > 0, got {cfg.ema_decay} and {cfg.ema_tau}")
    if cfg.lr <= 0 or cfg.batch_size < 1 or cfg.epochs < 1:
        bad("lr, batch_size and epochs must be positive")
    return cfg


def get_config(config: Union[str, GFLConfig] = "gfl_r50_fpn_1x_coco", **overrides: Any) -> GFLConfig:
    """A preset by name (or a config object) with ``overrides`` applied by field name."""
    if isinstance(config, GFLConfig):
        cfg = config
    elif isinstance(config, str):
        if config not in PRESETS:
            raise ConfigError(f"unknown preset {config!r}; known: {', '.join(PRESETS)}")
        cfg = replace(GFLConfig(), name=config, **{k: _coerce(k, v, _HINTS[k]) for k, v in PRESETS[config].items()})
    else:
        raise ConfigError(f"config must be a preset name or a GFLConfig, got {type(config).__name__}")
    for k in overrides:
        if k not in _FIELDS:
            raise ConfigError(f"unknown config field {k!r}")
    if overrides:
        cfg = replace(cfg, **{k: _coerce(k, v, _HINTS[k]) for k, v in overrides.items()})
    return validate(cfg)


def parse_set(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line; VALUE is a Python literal or a bare string."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key not in _FIELDS:
        raise ConfigError(f"--set {item!r}: unknown config field {key!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = {"true": True, "false": False, "none": None}.get(raw.lower(), raw)
    return key, _coerce(key, value, _HINTS[key])


def from_dict(d: dict[str, Any]) -> GFLConfig:
    """Rebuild a config saved with ``to_dict`` (checkpoints, run records); unknown keys are errors."""
    name = d.get("name", "gfl_r50_fpn_1x_coco")
    rest = {k: v for k, v in d.items() if k != "name"}
    return get_config(replace(GFLConfig(), name=name), **rest)
