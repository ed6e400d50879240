"""gflnb.study.stats against numbers computed by hand and textbook tables."""
import math

import pytest

from gflnb.study import stats


def test_tost_by_hand():
    a, b = [1.0, 1.2, 0.8], [1.1, 0.9, 1.0]  # means 1.0 and 1.0; variances 0.04 and 0.01
    se = math.sqrt(0.04 / 3 + 0.01 / 3)
    dof = (0.04 / 3 + 0.01 / 3) ** 2 / ((0.04 / 3) ** 2 / 2 + (0.01 / 3) ** 2 / 2)
    assert dof == pytest.approx(2.9412, abs=1e-4)
    from scipy.stats import t
    r = stats.tost(a, b, margin=0.5)
    assert r["diff"] == pytest.approx(0.0, abs=1e-12)
    assert r["p"] == pytest.approx(t.sf(0.5 / se, dof), rel=1e-9)  # both one-sided tests are the same at diff 0
    half = t.ppf(0.95, dof) * se  # the 90% interval
    assert (r["lo"], r["hi"]) == pytest.approx((-half, half), rel=1e-9)
    assert half < 0.5 and r["equivalent"] is True
    assert stats.tost(a, b, margin=0.2)["equivalent"] is False  # the 90% interval reaches past 0.2
    shifted = stats.tost([x + 1 for x in a], b, margin=0.5)
    assert shifted["equivalent"] is False and shifted["p"] > 0.5
    assert math.isnan(stats.tost([1.0], b, 0.5)["p"])


def test_power_matches_the_textbook_sample_sizes():
    # Cohen (1988), two-sample t, two-sided alpha 0.05, power 0.80: d = 1 needs 17 a side, d = 0.5 needs 64
    assert stats.seeds_for_power(1.0, 1.0) == 17
    assert stats.seeds_for_power(0.5, 1.0) == 64
    assert stats.seeds_for_power(2.0, 2.0) == 17  # only delta / sd matters
    assert 0.79 < stats.power(1.0, 1.0, 17) < 0.82 and stats.power(1.0, 1.0, 16) < 0.8
    assert stats.power(0.0, 1.0, 10) == pytest.approx(0.05, abs=1e-9)  # no difference: the test's level
    assert stats.detectable_difference(1.0, 17) < 1.0 < stats.detectable_difference(1.0, 16)
    assert stats.power(stats.detectable_difference(1.3, 5), 1.3, 5) == pytest.approx(0.8, abs=1e-6)
    # a smaller alpha (a multiple-comparison correction) needs more seeds
    assert stats.seeds_for_power(1.0, 1.0, alpha=0.05 / 26) > 17


def test_distribution_sd_subtracts_the_models_own_sampling_variance():
    assert stats.distribution_sd(1.39, 0.35) == pytest.approx(math.sqrt(1.39 ** 2 - 0.35 ** 2))
    assert stats.distribution_sd(1.27, 1.22) == pytest.approx(0.3529, abs=1e-4)
    assert stats.distribution_sd(0.3, 0.5) == 0.0  # less spread than sampling alone: floored


def test_holm_steps_down():
    # sorted p 0.001, 0.012, 0.03, 0.04 against 0.05/4, 0.05/3, 0.05/2, 0.05/1: the first two reject,
    # then 0.03 > 0.025 stops it
    assert stats.holm([0.03, 0.001, 0.04, 0.012]) == [False, True, False, True]
    assert stats.holm([0.001, float("nan")]) == [True, False]


def test_intervals_print_as_the_chapters_print_them():
    from gflnb.study.stats import fmt_estimate, fmt_interval
    assert fmt_interval(0.449, 2.011, signed=True) == "[+0.45, +2.01]"
    assert fmt_interval(-0.4, 0.1234, 3) == "[-0.400, 0.123]"
    assert fmt_estimate(1.234, 0.449, 2.011, signed=True) == "+1.23 [+0.45, +2.01]"
    assert fmt_estimate(0.5, 0.25, 0.75, 1) == "0.5 [0.2, 0.8]"  # Python's rounding: half to even on the binary value
