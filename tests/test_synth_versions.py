"""The synthetic set's versions: 1 frozen (the ablation sweep's records were made on it), 2 with
ambiguity at the scale of the bins."""
import hashlib
import json
import math

import numpy as np
import pytest

from gflnb.data import synth

# The first five training images of version 1, seed 0 (pixels, boxes, blurs, occlusions), as the
# ablation sweep saw them (its gfl seed-0 row, AP 19.97, was the same in two sessions). Changing
# version 1 would silently change what experiments/ablations/results.csv measured.
V1_FINGERPRINT = "803154d832a7a6f2f7903c3fa062f5a6"


def _fingerprint(version):
    h = hashlib.md5()
    for child in np.random.SeedSequence([0, 0]).spawn(5):
        img, objs = synth.render_image(np.random.default_rng(child), version=version)
        h.update(img.tobytes())
        h.update(repr([(o["box"], o["blur"], o["occlusion"]) for o in objs]).encode())
    return h.hexdigest()


def test_version_1_is_frozen():
    assert _fingerprint(1) == V1_FINGERPRINT
    assert _fingerprint(2) != V1_FINGERPRINT


def _objects(version, n=60):
    out = []
    for child in np.random.SeedSequence([5, 1]).spawn(n):
        out += synth.render_image(np.random.default_rng(child), version=version)[1]
    return out


def test_version_2_scales_blur_with_the_object():
    objs = _objects(2)
    rel = []
    for o in objs:
        x0, y0, x1, y1 = o["box"]
        s = math.sqrt((x1 - x0) * (y1 - y0))
        rel += [b / s for b in o["blur"] if b > 0]
    assert rel and min(rel) >= synth.BLUR_REL[0] - 1e-9 and max(rel) <= synth.BLUR_REL[1] + 1e-9
    v1 = [b for o in _objects(1) for b in o["blur"] if b > 0]
    assert max(v1) <= synth.MAX_BLUR
    big = [b for o in objs for b in o["blur"] if b > 0 and (o["box"][2] - o["box"][0]) > 120]
    assert big and max(big) > 2 * synth.MAX_BLUR  # what version 1 could not draw


def test_version_2_occludes_edges_on_purpose():
    def occluded_share(objs):
        sides = [v for o in objs for v in o["occlusion"]]
        return np.mean(np.asarray(sides) >= synth.OCCLUSION_MIN)
    assert occluded_share(_objects(2)) > occluded_share(_objects(1)) + 0.05
    for o in _objects(2, 10):
        amb = synth.ambiguity(o["blur"], o["occlusion"], o["box"], version=2)
        assert all(0 <= a <= 1 for a in amb)
        assert all(a > 0 for a, b in zip(amb, o["blur"]) if b > 0)


def test_versions_are_named_and_stamped(tmp_path):
    with pytest.raises(ValueError, match="version 3 does not exist"):
        synth.ensure_dataset(tmp_path, 2, 1, version=3)
    synth.ensure_dataset(tmp_path, 2, 1, seed=0, version=2)
    info = json.loads((tmp_path / "annotations" / "instances_val.json").read_text())["info"]
    assert info["version"] == 2
    first = (tmp_path / "val" / "val_000000.jpg").read_bytes()
    synth.ensure_dataset(tmp_path, 2, 1, seed=0, version=1)  # another version: regenerated
    assert json.loads((tmp_path / "annotations" / "synth.json").read_text())["version"] == 1
    assert (tmp_path / "val" / "val_000000.jpg").read_bytes() != first
    # a stamp written before versions existed means version 1
    (tmp_path / "annotations" / "synth.json").write_text(json.dumps(dict(num_train=2, num_val=1, seed=0)))
    mtime = (tmp_path / "val" / "val_000000.jpg").stat().st_mtime_ns
    synth.ensure_dataset(tmp_path, 2, 1, seed=0, version=1)
    assert (tmp_path / "val" / "val_000000.jpg").stat().st_mtime_ns == mtime


def test_every_default_is_the_latest_version():
    """Chapter 3's data_version, the sweep's set-up and `gflnb synth` must make the same set, or two
    side-by-side sweep points would regenerate one folder at once."""
    import jupytext
    from pathlib import Path
    nb = jupytext.read(Path(__file__).resolve().parent.parent / "notebooks" / "03_training.py")
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    ns = {}
    exec(params.source, ns)
    assert ns["data_version"] == synth.LATEST_VERSION
    from gflnb.cli import _parser
    a = _parser().parse_args(["synth", "out"])
    assert a.version is None  # resolved to LATEST_VERSION when run
