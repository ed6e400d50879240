import pytest

from gflnb.config import ConfigError, GFLConfig, from_dict, get_config, parse_set


def test_presets_follow_the_spec():
    base = get_config("gfl_r50_fpn_1x_coco")
    assert (base.lr, base.momentum, base.weight_decay, base.warmup_iters, base.warmup_ratio) == (0.01, 0.9, 1e-4, 500, 0.001)
    assert (base.epochs, base.milestones, base.img_scale, base.flip_prob) == (12, (8, 11), (1333, 800), 0.5)
    assert (base.score_thr, base.nms_pre, base.iou_threshold, base.max_per_img) == (0.05, 1000, 0.6, 100)
    ms = get_config("gfl_r50_fpn_ms-2x_coco")
    assert (ms.epochs, ms.milestones, ms.ms_short_range) == (24, (16, 22), (480, 800))
    x = get_config("gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco")
    assert (x.depth, x.groups, x.base_width, x.stage_with_dcn) == (101, 32, 4, (False, False, True, True))


def test_overrides_and_errors():
    assert get_config("gfl_cpu_demo", num_classes=7).num_classes == 7
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        get_config("nope")
    with pytest.raises(ConfigError, match="unknown config field 'num_class'"):
        get_config("gfl_cpu_demo", num_class=3)
    with pytest.raises(ConfigError, match="expects an int"):
        get_config("gfl_cpu_demo", num_classes="three")
    with pytest.raises(ConfigError, match="DCN|deformable"):
        get_config("gfl_r18_fpn_1x_coco", stage_with_dcn=(False, True, True, True))


def test_parse_set_and_roundtrip():
    assert parse_set("lr=0.02") == ("lr", 0.02)
    assert parse_set("stage_with_dcn=(False,True,True,True)") == ("stage_with_dcn", (False, True, True, True))
    assert parse_set("optimizer=adamw") == ("optimizer", "adamw")
    with pytest.raises(ConfigError, match="expects a number"):
        parse_set("lr=fast")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set("lr")
    cfg = get_config("gfl_cpu_demo", lr=0.5)
    assert from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg, GFLConfig)
