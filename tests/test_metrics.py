"""Tests for hcdc.metrics: ranking metrics against known orders, hand values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hcdc import metrics
from hcdc.errors import ConfigError, HCDCError


def test_identical_and_reversed_orders():
    a = [0.1, 0.5, 0.3, 0.9, 0.7]
    assert metrics.spearman(a, a) == pytest.approx(1.0)
    assert metrics.kendall(a, a) == pytest.approx(1.0)
    assert metrics.spearman(a, [-v for v in a]) == pytest.approx(-1.0)
    assert metrics.kendall(a, [-v for v in a]) == pytest.approx(-1.0)


def test_ties_against_hand_values_and_scipy():
    # ranks of a with averaged ties: [1, 2.5, 2.5, 4]; b: [1, 3, 2, 4]
    # spearman = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    # kendall: 5 concordant pairs, 0 discordant, 1 pair tied in a only -> 5 / sqrt(6 * 5)
    a, b = [1, 2, 2, 3], [1, 3, 2, 4]
    assert metrics.spearman(a, b) == pytest.approx(3 / math.sqrt(10))
    assert metrics.kendall(a, b) == pytest.approx(5 / math.sqrt(30))
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert metrics.kendall(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_random_ties_match_scipy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.integers(0, 4, size=12), rng.integers(0, 5, size=12)
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
        assert metrics.kendall(a, b) == pytest.approx(stats.kendalltau(a, b, variant="b").statistic)


def test_constant_side_gives_zero_not_nan():
    assert metrics.spearman([1, 1, 1], [1, 2, 3]) == 0.0
    assert metrics.kendall([1, 2, 3], [5, 5, 5]) == 0.0


def test_top_k_overlap():
    proxy = [0.9, 0.8, 0.1, 0.7, 0.2]  # top-2 by proxy: {0, 1}
    true = [0.9, 0.1, 0.8, 0.7, 0.2]  # top-2 by true: {0, 2}
    assert metrics.top_k_overlap(proxy, true, 2) == pytest.approx(0.5)
    assert metrics.top_k_overlap(proxy, true, 3) == pytest.approx(2 / 3)  # {0,1,3} vs {0,2,3}
    assert metrics.top_k_overlap(proxy, true, 5) == 1.0
    # lower is better: bottom-2 by proxy {2, 4}, by true {1, 4}
    assert metrics.top_k_overlap(proxy, true, 2, higher_is_better=False) == pytest.approx(0.5)


def test_top_k_ties_broken_by_position():
    # all proxy scores tie: its top-2 is positions {0, 1}
    assert metrics.top_k_overlap([1, 1, 1, 1], [4, 3, 2, 1], 2) == 1.0
    assert metrics.top_k_overlap([1, 1, 1, 1], [1, 2, 3, 4], 2) == 0.0


def test_regret():
    proxy = [0.2, 0.9, 0.5]
    true = [0.8, 0.6, 0.7]
    assert metrics.regret(proxy, true) == pytest.approx(0.2)  # picks 1: 0.8 - 0.6
    assert metrics.regret(true, true) == 0.0
    # lower is better (e.g. losses): proxy picks 0, true best is 1.0 at position 2
    assert metrics.regret([0.1, 0.5, 0.3], [2.0, 3.0, 1.0], higher_is_better=False) == pytest.approx(1.0)
    # ties in the proxy: first position is the pick
    assert metrics.regret([1, 1], [0.0, 1.0]) == pytest.approx(1.0)


def test_report_loss_vs_accuracy_sign_convention():
    accuracy = [0.70, 0.85, 0.60, 0.90, 0.75, 0.80]
    loss = [1.0 - a for a in accuracy]  # perfect proxy, but lower is better
    report = metrics.ranking_report(loss, accuracy, proxy_higher_is_better=False, k=3)
    assert report == pytest.approx({"spearman": 1.0, "kendall": 1.0, "top_k": 1.0, "regret": 0.0})
    wrong = metrics.ranking_report(loss, accuracy, proxy_higher_is_better=True, k=3)
    assert wrong["spearman"] == pytest.approx(-1.0)
    assert wrong["top_k"] == 0.0
    assert wrong["regret"] == pytest.approx(0.90 - 0.60)


def test_report_with_true_loss():
    true_loss = [0.3, 0.1, 0.2]
    proxy_acc = [0.5, 0.7, 0.9]  # picks 2, true loss 0.2 vs best 0.1
    report = metrics.ranking_report(
        proxy_acc, true_loss, proxy_higher_is_better=True, true_higher_is_better=False, k=1
    )
    assert report["regret"] == pytest.approx(0.1)
    assert report["top_k"] == 0.0
    assert report["spearman"] == pytest.approx(0.5)


def test_seed_agreement():
    same = [[1, 2, 3, 4], [10, 20, 30, 40]]
    assert metrics.seed_agreement(same) == (1.0, 1.0)
    r, rel = metrics.seed_agreement([[1, 2, 3, 4], [1, 2, 4, 3], [2, 1, 3, 4]])
    pairs = [0.8, 0.8, 0.6]  # (12 swapped 34), (12 swapped), (both swapped)
    assert r == pytest.approx(sum(pairs) / 3) and rel == pytest.approx(3 * r / (1 + 2 * r))
    assert metrics.seed_agreement([[1, 2, 3], [3, 2, 1]]) == (-1.0, 0.0)
    with pytest.raises(ConfigError, match="seeds >= 2"):
        metrics.seed_agreement([[1, 2, 3]])


def test_mean_std():
    assert metrics.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert metrics.mean_std([4.0]) == (4.0, 0.0)


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    values = [0.61, 0.72, 0.65, 0.70, 0.68, 0.59, 0.74]
    low, high = metrics.bootstrap_ci(values)
    assert low < np.mean(values) < high
    assert (low, high) == metrics.bootstrap_ci(values)
    assert metrics.bootstrap_ci(values, seed=1) != (low, high)
    narrow = metrics.bootstrap_ci(values, confidence=0.5)
    assert low < narrow[0] < narrow[1] < high
    assert metrics.bootstrap_ci([3.0]) == (3.0, 3.0)


def test_aggregate():
    reports = [
        {"spearman": 0.8, "regret": 0.0},
        {"spearman": 0.6, "regret": 0.1},
        {"spearman": 0.7, "regret": 0.2},
    ]
    out = metrics.aggregate(reports)
    assert out["num_reports"] == 3
    assert out["spearman_mean"] == pytest.approx(0.7)
    assert out["spearman_std"] == pytest.approx(0.1)
    assert out["regret_mean"] == pytest.approx(0.1)
    for key in ("spearman", "regret"):
        assert out[f"{key}_ci_low"] <= out[f"{key}_mean"] <= out[f"{key}_ci_high"]
    assert metrics.aggregate(reports) == out


@pytest.mark.parametrize(
    "call",
    [
        lambda: metrics.spearman([1, 2, 3], [1, 2]),
        lambda: metrics.spearman([1], [1]),
        lambda: metrics.kendall([1, float("nan"), 3], [1, 2, 3]),
        lambda: metrics.spearman([1, 2, float("inf")], [1, 2, 3]),
        lambda: metrics.kendall([[1, 2], [3, 4]], [[1, 2], [3, 4]]),
        lambda: metrics.spearman(["a", "b"], [1, 2]),
        lambda: metrics.top_k_overlap([1, 2, 3], [1, 2, 3], 0),
        lambda: metrics.top_k_overlap([1, 2, 3], [1, 2, 3], 4),
        lambda: metrics.regret([1, 2], [1, 2, 3]),
        lambda: metrics.mean_std([]),
        lambda: metrics.bootstrap_ci([1.0, 2.0], confidence=1.0),
        lambda: metrics.bootstrap_ci([1.0, 2.0], n_resamples=0),
        lambda: metrics.ranking_report([1, 2, 3], [1, 2, 3], proxy_higher_is_better=True, k=5),
        lambda: metrics.aggregate([]),
        lambda: metrics.aggregate([{"a": 1.0}, {"b": 1.0}]),
        lambda: metrics.aggregate([{"a": 1.0}, {"a": float("nan")}]),
    ],
)
def test_bad_input_raises_config_error(call):
    with pytest.raises(ConfigError):
        call()
    assert issubclass(ConfigError, HCDCError)
