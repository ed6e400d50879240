"""Chapter 7's package side: the verdict rule by hand, the sweep table read with one seed and failed
rows, the generated conclusions following the numbers, the Fig. 2 measurement (``anchor_scores``,
``background_summary``) on tiny random models, and the chapter without a sweep table."""
import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gflnb import build_model
from gflnb.study import ablation, paper
from gflnb.chapters.analysis import anchor_scores, background_summary
from gflnb.data.coco import Collate, CocoDetection
from gflnb.data.synth import dataset_paths, make_dataset

SUMMARY_KEYS = {"quality", "separate", "images", "anchors", "background", "positive", "bg_iou", "pos_iou", "bins",
                "pos_median_score", "bg_outrank_count", "bg_outrank_frac", "ranking_auc", "bg_score_q", "pos_score_q",
                "bg_cls_q", "bg_quality_q", "pos_quality_q", "bg_lowcls_highq_frac", "hist_score_iou",
                "hist_bg_cls_quality"}


# ----------------------------------------------------------------- the verdict rule
def test_compare_by_hand():
    from scipy import stats
    # means 55.7 and 53.5; sample variances 0.18 and 0.32, so SE = sqrt(0.09 + 0.16) = 0.5 and the
    # Welch-Satterthwaite dof = 0.25^2 / (0.09^2/1 + 0.16^2/1) = 0.0625 / 0.0337 = 1.8546
    r = ablation.compare([55.4, 56.0], [53.1, 53.9])
    assert r["diff"] == pytest.approx(2.2) and r["se"] == pytest.approx(0.5)
    assert r["dof"] == pytest.approx(0.0625 / 0.0337)
    half = stats.t.ppf(0.975, 0.0625 / 0.0337) * 0.5  # about 2.35: two seeds a side do not resolve 2.2 AP
    assert (r["lo"], r["hi"]) == (pytest.approx(2.2 - half), pytest.approx(2.2 + half)) and half > 2.2
    assert (r["n_better"], r["n_worse"], r["verdict"]) == (2, 2, "not resolved")
    assert r["p"] == pytest.approx(2 * stats.t.sf(2.2 / 0.5, 0.0625 / 0.0337)) and r["p"] > 0.05
    assert ablation.compare([55.4, 56.0], [53.1, 53.9], confidence=0.80)["verdict"] == "holds"
    # three seeds a side: variances 0.09 and 0.16, SE^2 = 0.03 + 0.16/3, dof = SE^4 / (0.03^2/2 + (0.16/3)^2/2)
    r3 = ablation.compare([55.4, 56.0, 55.7], [53.1, 53.9, 53.5])
    se2 = 0.03 + 0.16 / 3
    dof = se2 ** 2 / (0.03 ** 2 / 2 + (0.16 / 3) ** 2 / 2)
    assert r3["dof"] == pytest.approx(dof) and r3["lo"] == pytest.approx(2.2 - stats.t.ppf(0.975, dof) * se2 ** 0.5)
    assert r3["verdict"] == "holds"
    assert ablation.compare([53.1, 53.9, 53.5], [55.4, 56.0, 55.7])["verdict"] == "reversed"
    one = ablation.compare([60.0], [50.0, 50.2])  # one seed: no spread, no verdict
    assert one["diff"] == pytest.approx(9.9) and math.isnan(one["se"]) and one["verdict"] == "not resolved"
    none = ablation.compare([], [50.0, 50.2])
    assert math.isnan(none["diff"]) and none["n_better"] == 0 and none["verdict"] == "not resolved"
    assert ablation.compare([55.4, float("nan"), 56.0], [53.1, 53.9])["n_better"] == 2  # NaN = a failed seed
    assert ablation.compare([1.0, 1.0], [0.0, 0.0])["verdict"] == "holds"  # SE 0: any difference counts


def test_seeds_needed_and_holm_by_hand():
    from scipy import stats
    # variances 0.18 and 0.32 taken as true: with n a side, SE^2 = 0.5/n and dof = (0.5/n)^2 / ((0.18^2 + 0.32^2)/n^2/(n-1))
    def resolves(n):
        se2, dof = 0.5 / n, (0.5 / n) ** 2 / ((0.18 ** 2 + 0.32 ** 2) / n ** 2 / (n - 1))
        return stats.t.ppf(0.975, dof) * se2 ** 0.5 < 2.2
    want = next(n for n in range(2, 101) if resolves(n))
    assert ablation.seeds_needed([55.4, 56.0], [53.1, 53.9]) == want == 3
    assert ablation.seeds_needed([55.4, 56.0], [55.3, 56.1]) is None  # 0 apart: never
    assert ablation.seeds_needed([55.4], [53.1, 53.9]) is None
    # Holm at 5% over 3 tests: sorted 0.01 <= 0.05/3, 0.02 <= 0.05/2, then 0.04 <= 0.05: all three;
    # 0.01, 0.03, 0.04: the second fails 0.025, so it and every larger p stop
    assert ablation.holm([0.04, 0.01, 0.02]) == [True, True, True]
    assert ablation.holm([0.01, 0.03, 0.04]) == [True, False, False]
    # a NaN is no test: 2 tests, 0.01 <= 0.05/2 and then 0.03 <= 0.05/1 (over 3 tests 0.03 would need 0.025)
    assert ablation.holm([0.01, float("nan"), 0.03]) == [True, False, True]
    assert ablation.holm([0.01, 0.99, 0.03]) == [True, False, False]


def _write_csv(path, rows):
    cols = ["variant", "seed", "AP", "AP50", "AP75", "APs", "APm", "APl", "status", "error", "iterations", "wall_s",
            "command", "metrics_path", "record_path"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _ok(v, seed, ap):
    return dict(variant=v, seed=seed, AP=ap, AP50=ap + 20, AP75=ap + 4, status="ok", iterations=375, command="x")


def test_one_seed_and_failed_rows(tmp_path):
    _write_csv(tmp_path / "r.csv", [_ok("qfl_dirac", 0, 55.4), _ok("none", 0, 50.0),
                                    dict(variant="none", seed=1, status="failed", error="exit 1: boom"),
                                    dict(variant="iou", seed=0, status="failed", error="exit 1: boom"),
                                    dict(variant="iou", seed=1, status="missing", error="")])
    df = ablation.read_results(tmp_path / "r.csv")
    assert len(ablation.ok_rows(df)) == 2
    st = ablation.variant_stats(df, ["qfl_dirac", "none", "iou"])
    assert st.loc["qfl_dirac", "n"] == 1 and math.isnan(st.loc["qfl_dirac", "AP_std"]) and st.loc["none", "failed"] == 1
    assert st.loc["iou", "n"] == 0 and st.loc["iou", "failed"] == 1 and st.loc["iou", "missing"] == 1
    assert ablation.fmt(st.loc["qfl_dirac", "AP_mean"], st.loc["qfl_dirac", "AP_std"], 1) == "55.4 (n=1)"
    assert ablation.fmt(55.44, 0.31, 3) == "55.4 ± 0.3 (n=3)" and ablation.fmt(math.nan, math.nan, 0) == "–"
    t = ablation.side_by_side("1a", st)
    assert t.loc["joint, trained with QFL", "paper AP"] == "39.9"
    assert t.loc["joint, trained with QFL", "here AP"] == "55.4 (n=1)"
    assert t.loc["separate IoU branch", "here AP"] == "–"
    claims = ablation.claim_table(df)
    assert len(claims) == len(paper.CLAIMS) and set(claims["verdict"]) == {"not resolved"}
    why = dict(zip(claims["claim"], claims["why"]))
    assert why["joint QFL beats no quality branch"] == "fewer than 2 seeds"
    assert why["joint beats a separate IoU branch"] == "not run"
    counts = ablation.verdict_counts(claims)
    assert counts == dict(holds=0, reversed=0, not_resolved=len(paper.CLAIMS))
    info = ablation.run_info(df, {"parameters": {"num_train": 1000, "num_val": 200, "epochs": 3}})
    assert (info["runs"], info["ok"], info["failed"], info["missing"], info["iterations"], info["seeds"]) == (
        5, 2, 2, 1, [375], [0])
    text = "\n".join(ablation.learned(claims, info, {}, {}))
    assert "(2 failed, 1 not run yet)" in text and "375 iterations" in text and "1000 synthetic training images" in text and "COCO minival" in text
    assert "Not resolved (fewer than 2 seeds): joint QFL beats no quality branch" in text
    with pytest.raises(FileNotFoundError, match="no sweep table"):
        ablation.read_results(tmp_path / "missing.csv")


def test_conclusions_follow_the_numbers(tmp_path):
    from scipy import stats
    texts = {}
    cases = dict(joint_better=((55.4, 56.0, 55.7), (53.1, 53.9, 53.5)),
                 iou_better=((53.1, 53.9, 53.5), (55.4, 56.0, 55.7)))
    for name, (a, b) in cases.items():
        _write_csv(tmp_path / f"{name}.csv", [_ok("qfl_dirac", i, a[i]) for i in range(3)]
                   + [_ok("iou", i, b[i]) for i in range(3)])
        df = ablation.read_results(tmp_path / f"{name}.csv")
        claims = ablation.claim_table(df)
        texts[name] = "\n".join(ablation.learned(claims, ablation.run_info(df, {}), {}, {}))
    se2 = 0.03 + 0.16 / 3  # variances 0.09 and 0.16 over 3 seeds
    half = stats.t.ppf(0.975, se2 ** 2 / (0.03 ** 2 / 2 + (0.16 / 3) ** 2 / 2)) * se2 ** 0.5
    held = f"* Held: joint beats a separate IoU branch (+2.20 [{2.2 - half:+.2f}, {2.2 + half:+.2f}] AP here, +0.3 in the paper)"
    assert held in texts["joint_better"]
    assert "Reversed" not in texts["joint_better"]
    assert f"* Reversed: joint beats a separate IoU branch (-2.20 [{-2.2 - half:+.2f}, {-2.2 + half:+.2f}] AP here" \
        in texts["iou_better"]
    assert "1 holds, 0 are reversed" in texts["joint_better"] and "0 hold, 1 is reversed" in texts["iou_better"]
    # one testable claim: chance alone 0.05 verdicts; Holm over one test is the test itself
    assert "chance alone would still give about 0.1 verdicts" in texts["joint_better"]
    assert "Holm's correction over them (any false verdict at most 5% likely) 1 hold and 0 are reversed" \
        in texts["joint_better"]


def test_unresolved_claims_say_how_many_seeds_their_spread_needs(tmp_path):
    _write_csv(tmp_path / "r.csv", [_ok("qfl_dirac", 0, 55.4), _ok("qfl_dirac", 1, 56.0),
                                    _ok("iou", 0, 53.1), _ok("iou", 1, 53.9)])
    claims = ablation.claim_table(ablation.read_results(tmp_path / "r.csv"))
    row = claims.set_index("claim").loc["joint beats a separate IoU branch"]
    assert row["verdict"] == "not resolved" and row["why"] == "within the seed spread" and row["seeds_needed"] == 3
    text = "\n".join(ablation.learned(claims, {"iterations": [], "ok": 4, "failed": 0, "seeds": [0, 1]}, {}, {}))
    assert "joint beats a separate IoU branch (+2.20 [" in text and "; about 3 seeds a side at this spread)" in text


def test_runs_that_trained_to_nothing_are_named_with_the_claims_they_touch(tmp_path):
    _write_csv(tmp_path / "r.csv", [_ok("qfl_dirac", 0, 21.0), _ok("qfl_dirac", 1, 22.0), _ok("iou", 0, 0.0),
                                    _ok("iou", 1, 18.0)])
    df = ablation.read_results(tmp_path / "r.csv")
    ok = ablation.ok_rows(df)
    assert list(ablation.degenerate_runs(ok)["seed"]) == [0]
    text = "\n".join(ablation.learned(ablation.claim_table(df), ablation.run_info(df, {}), {}, {}, ok))
    assert "**Runs that trained to nothing** (AP below 1): iou seed 0." in text
    assert "measures that failure, not the representation: joint beats a separate IoU branch" in text
    healthy = "\n".join(ablation.learned(ablation.claim_table(df), ablation.run_info(df, {}), {}, {},
                                          ok[ok["AP"] > 1]))
    assert "trained to nothing" not in healthy


def _record(variant, seed, aps, epochs=(2, 4, 6), status="ok", background=None):
    rec = dict(variant=variant, seed=seed, status=status,
               eval_history=[dict(epoch=e, iter=125 * e, AP=a) for e, a in zip(epochs, aps)])
    if background is not None:
        rec["background"] = background
    return rec


def test_learning_curves_and_since_when_a_claim_is_reversed():
    # "beta = 2 beats beta = 1" (qfl_dirac vs beta1): beta = 2 leads at epoch 2, trails from epoch 4 on,
    # and with seeds 0.2 AP apart the interval is below 0 at epochs 4 and 6 only
    recs = [_record("qfl_dirac", s, [10 + d, 14 + d, 18 + d]) for s, d in enumerate((0.0, 0.2, 0.1))]
    recs += [_record("beta1", s, [8 + d, 16 + d, 20 + d]) for s, d in enumerate((0.0, 0.2, 0.1))]
    recs.append(_record("beta1", 3, [0.0, 0.0, 0.0], status="failed"))  # a failed run draws no curve
    curves = ablation.learning_curves(recs)
    assert len(curves) == 18 and set(curves["seed"]) == {0, 1, 2}
    st = ablation.curve_stats(curves)
    row = st[(st["variant"] == "beta1") & (st["epoch"] == 4)].iloc[0]
    assert (row["n"], row["mean"], row["lo"], row["hi"]) == (3, pytest.approx(16.1), 16.0, 16.2)
    claims = [c for c in paper.CLAIMS if (c["better"], c["worse"]) == ("qfl_dirac", "beta1")]
    by = ablation.claims_by_epoch(curves, claims)
    assert by["epoch"].tolist() == [2, 4, 6]
    assert by["diff"].tolist() == pytest.approx([2.0, -2.0, -2.0])
    assert by["verdict"].tolist() == ["holds", "reversed", "reversed"]
    final = pd.DataFrame([dict(claim=claims[0]["claim"], verdict="reversed")])
    [s] = ablation.reversal_sentences(final, by)
    assert "below 0 at epochs 4 and 6" in s and "paper's direction (or 0) at 2" in s and "appears late" in s
    assert "interval lies below 0 at epochs 4 and 6" in s
    fl = ablation.flipped_claims(by, 2, 6)
    assert fl.to_dict("records") == [dict(claim=claims[0]["claim"], early="holds", late="reversed")]
    # the table's ok rows filter the records: without beta1 in it, no claim has both sides
    df = pd.DataFrame(dict(variant=["qfl_dirac"] * 3, seed=[0, 1, 2], status=["ok"] * 3, AP=[18.0, 18.2, 18.1]))
    assert set(ablation.learning_curves(recs, df)["variant"]) == {"qfl_dirac"}


def test_twice_the_schedule_against_its_base_by_hand():
    from scipy import stats
    grid = dict(parameters=dict(epochs=12), variants=dict(
        gfl=dict(tables=["2b"]), beta1=dict(tables=["1c"]), centerness_dfl=dict(tables=["2a"]),
        gfl_24e=dict(tables=[], parameters=dict(epochs=24)), beta1_24e=dict(tables=[], parameters=dict(epochs=24))))
    assert ablation.longer_schedules(grid) == {"gfl_24e": "gfl", "beta1_24e": "beta1"}
    assert ablation.curve_panels(grid)["schedule"][1] == ["gfl", "beta1", "gfl_24e", "beta1_24e"]
    df = pd.DataFrame(dict(variant=["gfl"] * 3 + ["gfl_24e"] * 3 + ["beta1"], seed=[0, 1, 2] * 2 + [0],
                           status=["ok"] * 7, AP=[20.0, 21.0, 22.0, 24.0, 25.0, 26.0, 19.0]))
    # the 24-epoch runs' last two evaluations: +0.5, +1.0 and +0.0 AP
    curves = pd.DataFrame(dict(variant="gfl_24e", seed=[0, 0, 1, 1, 2, 2], epoch=[22, 24] * 3, iter=0,
                               AP=[23.5, 24.0, 24.0, 25.0, 26.0, 26.0]))
    gains = ablation.schedule_gains(df, grid, curves).set_index("variant")
    r = gains.loc["gfl_24e"]
    half = stats.t.ppf(0.975, 4) * math.sqrt(2 / 3)  # equal variances 1, 3 seeds a side: dof 4
    assert (r["base"], r["epochs"], r["base_epochs"], r["AP"], r["base_AP"]) == ("gfl", 24, 12, 25.0, 21.0)
    assert (r["diff"], r["lo"], r["hi"]) == (4.0, pytest.approx(4 - half), pytest.approx(4 + half))
    assert r["verdict"] == r["reading"] == "holds" and r["last_from"] == 22 and r["last_gain"] == pytest.approx(0.5)
    assert math.isnan(gains.loc["beta1_24e", "diff"]) and gains.loc["beta1_24e", "n_worse"] == 1
    assert gains.loc["beta1_24e", "reading"] == "fewer than 2 seeds"
    [s] = ablation.schedule_sentences(gains.reset_index(), {"gfl": "GFL"})
    assert s.startswith("GFL: 24 epochs give 25.00 AP against 21.00 at 12, +4.00 [")
    assert "stop short of a plateau" in s and "last 2 epochs the longer run still moved +0.50 AP" in s
    one = gains.reset_index().assign(n_better=1, lo=math.nan, hi=math.nan, verdict="not resolved",
                                     reading="fewer than 2 seeds")
    assert all("too few seeds for a verdict yet" in x for x in ablation.schedule_sentences(one, {}))
    assert any("Twice the schedule" in x for x in ablation.learned(
        ablation.claim_table(df), ablation.run_info(df, grid), {}, {}, schedule=gains.reset_index()))


def test_fig2_difference_has_an_interval_over_seeds():
    def bg(frac, separate):
        return dict(quality="iou" if separate else "qfl", separate=separate, bg_outrank_frac=frac)
    recs = [_record("iou", s, [1.0], background=bg(f, True)) for s, f in enumerate((0.010, 0.012, 0.011))]
    recs += [_record("qfl_dirac", s, [1.0], background=bg(f, False)) for s, f in enumerate((0.005, 0.006, 0.007))]
    table = ablation.fig2_compare(ablation.background_table(recs), "qfl_dirac")
    [r] = table.to_dict("records")
    # in points: 1.0, 1.2, 1.1 against 0.5, 0.6, 0.7 -> +0.5, both sample variances 0.01
    assert r["variant"] == "iou" and r["diff"] == pytest.approx(0.5) and r["se"] == pytest.approx((0.02 / 3) ** 0.5)
    assert r["lo"] > 0 and r["verdict"] == "holds" and (r["n_better"], r["n_worse"]) == (3, 3)
    pooled = ablation.pool_background(recs)
    lines = ablation.learned(pd.DataFrame(columns=["claim", "verdict", "why", "p"]),
                             dict(iterations=[], ok=6, failed=0, seeds=[0, 1, 2]), pooled, {}, records=recs)
    [fig2] = [x for x in lines if x.startswith("* Fig. 2")]
    assert "+0.50 points, 95% interval [+" in fig2 and "as the paper's Fig. 2 argues" in fig2


def test_paper_numbers_and_claims():
    assert paper.paper_value("1a", "qfl_dirac") == 39.9 and paper.paper_value("3", "gfl") == 40.2
    assert paper.paper_value("1c", "beta0", "AP75") == 40.3 and paper.paper_value("2a", "centerness") == 39.2
    assert paper.paper_value("2b", "n12") == 40.1 and paper.paper_value("2c", "interval4") == 39.8
    assert paper.paper_value("2b", "n12", "AP50") is None  # the paper gives AP only there
    diffs = {c["claim"]: paper.paper_diff(c) for c in paper.CLAIMS}
    assert diffs["joint QFL beats no quality branch"] == 1.9 and diffs["DGQP beats joint QFL (GFLv2)"] == 0.8
    assert diffs["QFL and DFL together beat neither"] == 1.0
    assert all(d is not None and d > 0 for d in diffs.values())  # each is the paper's direction


# ----------------------------------------------------------------- the Fig. 2 measurement
def test_background_summary_by_hand():
    scores = dict(quality="iou", separate=True, images=1,
                  score=np.array([0.92, 0.15, 0.55, 0.75, 0.99]), iou=np.array([0.15, 0.25, 0.65, 0.85, 0.45]),
                  cls=np.array([0.05, 0.35, 0.65, 0.85, 0.99]), quality_score=np.array([0.95, 0.25, 0.85, 0.88, 1.0]))
    s = background_summary(scores)
    assert set(s) == SUMMARY_KEYS
    json.dumps(s)  # JSON-ready
    # background: anchors 0, 1 (IoU < 0.3); positive-like: 2, 3; anchor 4 (IoU 0.4) ignored
    assert (s["anchors"], s["background"], s["positive"]) == (5, 2, 2)
    assert s["pos_median_score"] == pytest.approx(0.65)
    assert s["bg_outrank_count"] == 1 and s["bg_outrank_frac"] == pytest.approx(0.5)  # 0.92 > 0.65, 0.15 is not
    assert s["ranking_auc"] == pytest.approx(0.5)  # of 4 (pos, bg) pairs, 0.55 and 0.75 beat only 0.15
    assert s["bg_lowcls_highq_frac"] == pytest.approx(0.5)  # anchor 0: class 0.05, quality 0.95
    assert s["bg_quality_q"]["max"] == pytest.approx(0.95) and s["bg_score_q"]["q50"] == pytest.approx(0.535)
    h = np.array(s["hist_score_iou"])
    assert h.shape == (10, 10) and h.sum() == 5 and h[9, 1] == 1 and h[9, 4] == 1  # (0.92, 0.15), (0.99, 0.45)
    hq = np.array(s["hist_bg_cls_quality"])
    assert hq.sum() == 2 and hq[0, 9] == 1 and hq[3, 2] == 1  # (0.05, 0.95), (0.35, 0.25)
    joint = background_summary(dict(scores, quality="qfl", separate=False, cls=None, quality_score=None))
    assert joint["hist_bg_cls_quality"] is None and joint["bg_quality_q"] is None
    assert joint["bg_lowcls_highq_frac"] is None
    nopos = background_summary(dict(scores, iou=np.zeros(5)))
    assert nopos["positive"] == 0 and nopos["pos_median_score"] is None and nopos["bg_outrank_frac"] is None
    assert nopos["ranking_auc"] is None


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, num_train=0, num_val=2, seed=5, progress=False)
    return dataset_paths(root, "val")


@pytest.mark.parametrize("quality", ["iou", "qfl"])
def test_anchor_scores_on_a_tiny_model(tiny_val, quality):
    torch.manual_seed(0)
    model = build_model("gfl_cpu_demo", num_classes=3, pretrained_backbone=False, quality=quality).eval()
    ds = CocoDetection(*tiny_val, model.cfg, train=False)
    out = anchor_scores(model, ds, max_images=50)
    sep = quality == "iou"
    assert (out["quality"], out["separate"], out["images"]) == (quality, sep, 2)
    n = len(out["score"])
    assert n > 0 and all(len(out[k]) == n for k in ("iou", "level", "image"))
    assert set(out["level"].tolist()) == {0, 1, 2} and set(out["image"].tolist()) == {0, 1}
    assert ((out["score"] >= 0) & (out["score"] <= 1)).all() and ((out["iou"] >= 0) & (out["iou"] <= 1)).all()
    if sep:
        np.testing.assert_allclose(out["score"], out["cls"] * out["quality_score"], rtol=1e-6)
    else:
        assert out["cls"] is None and out["quality_score"] is None

    # the head's per-anchor score is what predict ranks by: the same maximum over all (anchor, class) pairs
    images, _, metas = Collate(model.cfg)([ds[0]])
    with torch.no_grad():
        cls_scores, bbox_preds = model(images)
        per = model.bbox_head.anchor_scores(cls_scores, bbox_preds, metas)[0]
        dets = model.bbox_head.predict(cls_scores, bbox_preds, metas, score_thr=0.0, nms_pre=10 ** 9,
                                       min_bbox_size=-1, with_nms=False)[0]
    assert per["score"].max() == dets["scores"].max()
    assert len(per["score"]) * 3 == len(dets["scores"])  # every pair of every anchor, none thresholded away
    assert ("quality" in per) == sep

    s = background_summary(out)
    assert set(s) == SUMMARY_KEYS
    json.dumps(s)
    assert s["anchors"] == n and s["background"] + s["positive"] <= n
    assert np.array(s["hist_score_iou"]).sum() == n
    assert (s["hist_bg_cls_quality"] is not None) == sep
    if sep:
        assert np.array(s["hist_bg_cls_quality"]).sum() == s["background"]
    assert anchor_scores(model, ds, max_images=1)["images"] == 1


# ----------------------------------------------------------------- the chapter without a sweep
def test_chapter_without_a_sweep_table(tmp_path):
    from gflnb.book import ROOT, execute, records
    out = tmp_path / "07.ipynb"
    execute(ROOT / "notebooks" / "07_ablations.py", out,
            dict(results_csv=str(tmp_path / "none.csv"), grid=str(tmp_path / "none.yaml"),
                 records_dir=str(tmp_path / "none")), cwd=ROOT / "notebooks", timeout=300)
    rec = records(out)
    assert len(rec) == 1 and rec[0]["runs"] == 0 and rec[0]["claims"] == len(paper.CLAIMS)
    assert rec[0]["not_resolved"] == len(paper.CLAIMS)
    assert "no sweep table at" in out.read_text()
