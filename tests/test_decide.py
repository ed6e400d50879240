"""The plateau sweep's verdicts (gflnb.study.decide): the two-part interval by hand, the bootstrap
kept and reused, and a sweep of made-up points decided end to end."""
import json
import math

import numpy as np
import pytest
import yaml

from gflnb.study import decide, stats
from gflnb.study.imagewise import ImageMatches, ap


def _matches(seed: int, hit: float, n_img: int = 400) -> ImageMatches:
    """Detections of 2 classes on ``n_img`` images, each matching a ground truth with chance ``hit``
    (at every IoU threshold alike), scores higher for the matches."""
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 3, size=(n_img, 2))
    cat, img, score, match = [], [], [], []
    for i in range(n_img):
        for k in range(2):
            for _ in range(gt[i, k] + 1):
                m = rng.random() < hit
                cat.append(k), img.append(i), match.append(m)
                score.append(rng.uniform(0.4, 1.0) if m else rng.uniform(0.0, 0.7))
    order = np.lexsort((-np.asarray(score), np.asarray(img), np.asarray(cat)))  # per class, image, then score
    t = 10
    det_match = np.repeat(np.asarray(match)[order, None], t, axis=1)
    return ImageMatches(np.arange(1, n_img + 1), np.array([1, 2]), np.asarray(cat)[order], np.asarray(img)[order],
                        np.asarray(score, np.float64)[order], det_match, np.zeros_like(det_match), gt)


def test_with_no_evaluation_part_the_interval_is_welchs():
    a, b = [30.1, 29.5, 30.8, 30.2], [29.0, 29.9, 28.7]
    boot_a, boot_b = np.full((50, 4), 3.0), np.full((50, 3), 1.0)  # the images move nothing
    ci = decide.claim_interval(a, b, boot_a, boot_b)
    w = stats.welch(np.array(a), np.array(b))
    assert ci["se_eval"] == 0.0
    for k in ("diff", "se", "dof", "lo", "hi", "p"):
        assert ci[k] == pytest.approx(w[k], rel=1e-12)


def test_the_two_parts_add_as_variances_by_hand():
    a, b = [3.0, 1.0, 2.0], [0.0, 1.0]  # means 2 and 0.5; sample variances 1 and 0.5
    d = np.array([1.0, -1.0] * 50)  # the bootstrap's differences: sd = sqrt(100/99)
    boot_a = np.zeros((100, 3)) + d[:, None]
    boot_b = np.zeros((100, 2))
    ci = decide.claim_interval(a, b, boot_a, boot_b)
    va, vb, ve = 1 / 3, 0.5 / 2, 100 / 99
    se = math.sqrt(va + vb + ve)
    assert ci["diff"] == pytest.approx(1.5)
    assert ci["se_train"] == pytest.approx(math.sqrt(va + vb))
    assert ci["se_eval"] == pytest.approx(math.sqrt(ve))
    assert ci["se"] == pytest.approx(se)
    assert ci["dof"] == pytest.approx(se ** 4 / (va ** 2 / 2 + vb ** 2 / 1))
    from scipy import stats as st
    half = st.t.ppf(0.975, ci["dof"]) * se
    assert (ci["lo"], ci["hi"]) == pytest.approx((1.5 - half, 1.5 + half))


def test_a_floor_caps_the_power_that_seeds_can_buy():
    assert stats.seeds_for_power(1.0, 1.0, 0.05) == 17  # Cohen's d = 1, unchanged with no floor
    # the test set alone leaves the difference 1 standard error away: even infinite seeds give
    # P(Z > 1.96 - 1) + P(Z < -1.96 - 1) = 0.17
    assert stats.power(1.0, 1.0, 100_000, 0.05, floor=1.0) == pytest.approx(0.17, abs=0.005)
    assert stats.seeds_for_power(1.0, 1.0, 0.05, floor=1.0) is None
    assert stats.seeds_for_power(1.0, 1.0, 0.05, floor=0.2) > 17  # a small floor costs seeds


def _sweep(tmp_path, aps: dict[str, list[float]], hits: dict[str, float]):
    """A grid of the paper's variant names with made-up finished points and their evaluations."""
    from gflnb.study.sweep import ROOT
    seeds = max(len(v) for v in aps.values())
    grid = dict(notebook="notebooks/03_training.py", out=str(tmp_path / "sweep"), seeds=list(range(seeds)),
                parameters=dict(num_test=400), variants={v: dict(overrides={}) for v in aps})
    gf = tmp_path / "grid.yaml"
    gf.write_text(yaml.safe_dump(grid))
    assert (ROOT / "notebooks/03_training.py").exists()
    for v, values in aps.items():
        for s, x in enumerate(values):
            pid = f"{v}__s{s}"
            (tmp_path / "sweep/records").mkdir(parents=True, exist_ok=True)
            (tmp_path / "sweep/evals").mkdir(parents=True, exist_ok=True)
            (tmp_path / f"sweep/records/{pid}.json").write_text(json.dumps(
                dict(variant=v, seed=s, status="ok", metrics=dict(AP=x + 1), test_metrics=dict(AP=x))))
            _matches(100 * s + len(v), hits[v]).save(tmp_path / f"sweep/evals/{pid}.npz")
    return gf


def test_a_sweep_is_decided_and_its_bootstrap_kept_and_reused(tmp_path, monkeypatch):
    aps = dict(qfl_dirac=[31.0, 31.4, 30.8, 31.2], beta1=[28.0, 28.5, 27.7, 28.2],  # a claim that holds
               gfl=[30.0, 30.2, 29.9, 30.1], n14=[30.1, 29.9, 30.0, 30.2])  # a tie
    hits = dict(qfl_dirac=0.7, beta1=0.5, gfl=0.6, n14=0.6)
    gf = _sweep(tmp_path, aps, hits)
    pts, cl, ti = decide.decide(gf, n_boot=30)
    assert len(pts) == 16
    beta = cl.set_index("worse").loc["beta1"]
    assert beta["verdict"] == "holds" and beta["n_better"] == 4 and beta["diff"] == pytest.approx(3.0)
    assert beta["se_eval"] > 0  # the models differ on the images, so resampling them moves the gap
    assert (cl.loc[cl["better"].isin(["none", "iou"]) | cl["worse"].isin(["none", "iou"]), "why"] == "not run").all()
    tie = ti.set_index("a").loc["n14"]
    assert tie["diff"] == pytest.approx(0.0, abs=1e-12) and tie["equivalent"]

    cache = tmp_path / "sweep" / decide.BOOTSTRAP_FILE
    z = np.load(cache)
    assert sorted(z["ids"].tolist()) == sorted(f"evals/{i}.npz" for i in pts["id"])
    i = z["ids"].tolist().index("evals/beta1__s2.npz")  # a column is that point's AP on each resample
    m = ImageMatches.load(tmp_path / "sweep/evals/beta1__s2.npz")
    from gflnb.study.imagewise import bootstrap_weights
    assert z["aps"][7, i] == ap(m, bootstrap_weights(400, 30, decide.BOOT_SEED)[7])

    def _boom(args):
        raise AssertionError(f"recomputed {args[0]}")
    monkeypatch.setattr(decide, "_column", _boom)
    _, again, _ = decide.decide(gf, n_boot=30)  # nothing changed: all from the cache
    assert again["p"].equals(cl["p"])

    _matches(999, 0.9).save(tmp_path / "sweep/evals/gfl__s1.npz")  # one point's evaluation changed
    computed = []
    monkeypatch.setattr(decide, "_column", lambda args: computed.append(args[0]) or np.zeros(args[1]))
    decide.decide(gf, n_boot=30)
    assert [p.rsplit("/", 1)[1] for p in computed] == ["gfl__s1.npz"]


def test_the_pilots_table_uses_the_verdicts_points_and_resamples(tmp_path):
    from gflnb.study import pilot
    from gflnb.study.imagewise import sampling_sd
    aps = dict(gfl=[30.0, 30.6, 29.7], beta1=[28.0, 28.4, 27.1])
    gf = _sweep(tmp_path, aps, dict(gfl=0.6, beta1=0.5))
    table = pilot.spread_table(gf, ["gfl", "beta1"], n_boot=40, seed=decide.BOOT_SEED).set_index("variant")
    assert table.loc["beta1", "test_seeds"] == 3 and table.loc["beta1", "test_images"] == 400
    assert table.loc["beta1", "test_seed_sd"] == pytest.approx(np.std(aps["beta1"], ddof=1))
    by_hand = [sampling_sd(ImageMatches.load(tmp_path / f"sweep/evals/beta1__s{s}.npz"), 40, decide.BOOT_SEED)
               for s in range(3)]
    assert table.loc["beta1", "test_sampling_sd"] == pytest.approx(math.sqrt(np.mean(np.square(by_hand))), rel=1e-12)
    assert (tmp_path / "sweep" / decide.BOOTSTRAP_FILE).exists()  # the verdicts will reuse these resamples
    assert math.isnan(table.loc["gfl", "val_sampling_sd"])  # no run folders with validation detections here


def test_the_evaluation_part_separates_what_the_seeds_already_carry():
    """Bootstrap APs built as a variant's shared shift plus each model's own noise: the parts come
    back as they were put in."""
    rng = np.random.default_rng(0)
    B, n = 20000, 4
    c_a, c_b = rng.normal(0, 0.3, B), rng.normal(0, 0.3, B)  # what the images do to each variant
    boot_a = c_a[:, None] + rng.normal(0, 0.5, (B, n))  # plus each model's own
    boot_b = c_b[:, None] + rng.normal(0, 0.5, (B, n))
    ev = decide.evaluation_parts(boot_a, boot_b)
    assert ev["model"] == pytest.approx(math.sqrt(0.25 / n * 2), rel=0.03)
    assert ev["shared"] == pytest.approx(math.sqrt(0.09 * 2), rel=0.03)
    assert ev["total"] == pytest.approx(math.sqrt(0.09 * 2 + 0.25 / n * 2), rel=0.03)
    same = decide.evaluation_parts(boot_a, c_a[:, None] + rng.normal(0, 0.5, (B, n)))  # one variant twice
    assert same["shared"] < 0.05 < same["model"]


def test_the_design_weighs_test_set_sizes_by_hours():
    import pandas as pd

    from gflnb.study import pilot
    table = pd.DataFrame(dict(variant=["gfl", "beta1"], test_seed_sd=[0.30, 0.37], test_own_sd=[0.21, 0.21],
                              test_images=[2000, 2000]))
    out = pilot.sizes(table, 26, floor=0.06, eval_seconds_per_image=0.035).set_index("test_images")
    sd = math.sqrt(0.37 ** 2 - 0.21 ** 2 + 0.21 ** 2 * 2000 / 8000)  # beta1's: the larger seed sd
    assert out.loc[8000, "seed_sd"] == pytest.approx(sd) and out.loc[8000, "shared"] == pytest.approx(0.03)
    n = stats.seeds_for_power(1.0, sd, 0.05 / 26, floor=0.03)
    assert out.loc[8000, "seeds"] == n
    assert out.loc[8000, "hours"] == pytest.approx(21 * n * (16 + 8000 * 0.035 / 60) / 2 / 60)
    assert out.loc[2000, "seed_sd"] == pytest.approx(0.37)  # the measured size: nothing scaled


def test_the_rule_picks_the_cheapest_size_or_caps_the_seeds():
    import pandas as pd

    from gflnb.study import pilot
    t = pd.DataFrame(dict(test_images=[2000, 8000], seeds=[8, 6], hours=[24.0, 19.5], resolves=[0.9, 0.96]))
    assert pilot.choose(t) == dict(test_images=8000, seeds=6, hours=19.5, resolves=0.96, capped=False)
    t = pd.DataFrame(dict(test_images=[2000, 8000], seeds=[None, None], hours=[29.1, 32.4], resolves=[1.19, 1.11]))
    assert pilot.choose(t) == dict(test_images=8000, seeds=10, hours=32.4, resolves=1.11, capped=True)
