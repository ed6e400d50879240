"""Chapter 5's statistics: edge kinds, bimodality, the object-level bootstrap and the verdicts."""
import math

import numpy as np
import pandas as pd
import pytest

from gflnb.chapters import spread


def test_edge_kinds():
    k = spread.edge_kind([0, 2.0, 0, 3.0], [0.0, 0.1, 0.5, 0.9])
    assert list(k) == ["clear", "blurred", "occluded", "blurred+occluded"]


def test_bimodal_rule():
    two = np.array([0, 0.1, 0.4, 0.1, 0, 0.05, 0.3, 0.05])  # peaks 0.4 and 0.3, valley 0
    shoulder = np.array([0, 0.1, 0.6, 0.2, 0.1, 0, 0, 0])  # one peak
    small = np.array([0, 0.7, 0.1, 0, 0.05, 0.1, 0.05, 0])  # second peak below 20% of the first
    shallow = np.array([0, 0.3, 0.26, 0.28, 0.1, 0.06, 0, 0])  # valley 0.26 > 0.7 x 0.28
    assert list(spread.is_bimodal(np.stack([two, shoulder, small, shallow]))) == [True, False, False, False]
    assert spread.is_bimodal(two.reshape(1, 1, -1)).shape == (1, 1)


def _edges(n=400, r=0.5, seed=0):
    rng = np.random.default_rng(seed)
    obj = rng.normal(size=n)  # a shared per-object effect: edges of one object are correlated
    ann = np.repeat(np.arange(n), 4)
    x = np.repeat(obj, 4) + 0.3 * rng.normal(size=4 * n)
    y = r * x + rng.normal(size=4 * n)
    return pd.DataFrame(dict(ann_id=ann, x=x, y=y))


def test_bootstrap_mean_and_r_cover_the_truth_and_are_seeded():
    d = _edges()
    m = spread.boot_mean(d, "y")
    assert m[0] == pytest.approx(d["y"].mean()) and m[1] < m[0] < m[2]
    assert spread.boot_mean(d, "y") == m  # seeded: the same interval every run
    r = spread.boot_pearson(d, "x", "y")
    assert r[0] == pytest.approx(np.corrcoef(d["x"], d["y"])[0, 1])
    assert r[1] < r[0] < r[2] and r[1] > 0


def test_bootstrap_over_objects_is_wider_than_over_edges():
    d = _edges()
    obj = spread.boot_mean(d, "x")
    edge = spread.boot_mean(d.assign(ann_id=np.arange(len(d))), "x")
    assert (obj[2] - obj[1]) > 1.5 * (edge[2] - edge[1])  # 4 correlated edges are not 4 samples


def test_contrast_and_verdicts():
    rng = np.random.default_rng(1)
    n = 300
    kind = np.where(rng.uniform(size=4 * n) < 0.3, "blurred", "clear")
    ent = np.where(kind == "blurred", 1.5, 1.0) + 0.2 * rng.normal(size=4 * n)
    amb = (kind == "blurred") * rng.uniform(0.2, 1, 4 * n)
    d = pd.DataFrame(dict(ann_id=np.repeat(np.arange(n), 4), kind=kind, entropy=ent, ambiguity=amb,
                          blur=(kind == "blurred") * 3.0, blur_bins=amb, std_bins=ent,
                          abs_err_px=-ent + rng.normal(size=4 * n), occlusion=0.0, std_px=ent, bimodal=False))
    c = spread.boot_contrast(d, "entropy", "kind", "blurred", "clear")
    assert 0.45 < c[0] < 0.55 and c[1] > 0
    f = spread.findings(d).set_index("statistic")["verdict"]
    assert f["the mean entropy of blurred minus that of clear edges (nats)"] == "holds"
    assert f["the bimodal share of unclear minus that of clear edges"] == "not resolved"  # none is bimodal
    assert f["r(entropy, |error|)"] == "reversed"  # built so: a flatter distribution, a smaller error
    lines = spread.describe_findings(spread.findings(d), spread.by_kind(d))
    assert any("**reversed**" in ln and "r(entropy, |error|)" in ln for ln in lines)
    assert lines[-2].startswith("* Bimodal distributions")
    assert lines[-1].startswith("* **These verdicts are about one trained model.**")
    # the blurred contrast (+0.5, interval well above 0) is far from flipping; one whose interval nearly
    # touches zero is named
    near = pd.DataFrame([dict(claim="c1", statistic="s", estimate=0.10, lo=0.02, hi=0.18, verdict="holds"),
                         dict(claim="c2", statistic="s", estimate=0.50, lo=0.40, hi=0.60, verdict="holds")])
    assert spread.describe_findings(near)[-1].endswith("from zero): c1.")
    assert spread._interval_verdict(-0.1, 0.2) == "not resolved"
    assert spread._interval_verdict(math.nan, 0.2) == "not measured"


def test_gallery_picks_a_third_of_each_kind():
    rows = []
    for a, kinds in enumerate([["clear"] * 4, ["clear"] * 4, ["blurred", "clear", "clear", "clear"],
                               ["occluded", "clear", "clear", "clear"], ["blurred", "occluded", "clear", "clear"]]):
        for k, kind in enumerate(kinds):
            rows.append(dict(ann_id=a, kind=kind, entropy=1.0 + a * 0.1, ambiguity=0.0 if kind == "clear" else 0.5 + a / 10))
    picks = spread.pick_objects(pd.DataFrame(rows), 3)
    assert picks == [(0, "clear"), (4, "blurred"), (3, "occluded")]
    table = spread.interval_table(spread.by_kind(pd.DataFrame(rows).assign(std_bins=1.0, std_px=8.0, bimodal=False)))
    assert list(table.columns) == ["edges", "objects", "entropy (nats)", "std (bins)", "bimodal (%)"]
