"""``recsys.evaluation.stats``: the bootstrap against a plain reference, intervals, paired tests and Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.evaluation.stats import (
    bootstrap_means,
    bootstrap_p_value,
    holm,
    intervals,
    pairwise_tests,
)


def _reference(
    values: np.ndarray, counts: np.ndarray, labels: np.ndarray, *, resamples: int, seed: int
) -> np.ndarray:
    """One resample at a time: draw clusters with replacement, pool their rows, take the ratio."""
    rng = np.random.default_rng(seed)
    clusters = np.unique(labels)
    out = []
    for start in range(0, resamples, 1000):  # the same draws: blocks of 1000 resamples
        picks = rng.integers(0, len(clusters), size=(min(1000, resamples - start), len(clusters)))
        for pick in picks:
            rows = np.concatenate([np.flatnonzero(labels == clusters[c]) for c in pick])
            defined = np.isfinite(values[rows])
            out.append(values[rows][defined].sum() / counts[rows][defined].sum())
    return np.array(out)


@pytest.mark.parametrize("clustered", [False, True])
def test_bootstrap_means_is_the_plain_resampling(clustered: bool) -> None:
    rng = np.random.default_rng(3)
    values, counts = rng.random(30), rng.integers(1, 4, size=30).astype(float)
    values[[4, 17]] = np.nan  # undefined rows count in neither total
    labels = rng.integers(0, 9, size=30) if clustered else np.arange(30)
    fast = bootstrap_means(
        values, counts=counts, clusters=labels if clustered else None, resamples=1200, seed=5
    )
    slow = _reference(values, counts, labels, resamples=1200, seed=5)
    assert fast.shape == (1200, 1)
    np.testing.assert_allclose(fast[:, 0], slow, rtol=1e-12)


def test_intervals_share_the_resamples_and_hold_the_estimate() -> None:
    rng = np.random.default_rng(0)
    x = rng.random(500)
    found = intervals({"x": x, "twice": 2 * x, "flat": np.full(500, 0.25)}, resamples=2000)
    assert found["x"]["mean"] == pytest.approx(x.mean())
    assert found["x"]["ci_low"] < x.mean() < found["x"]["ci_high"]
    # the same resamples for every column: a column twice another has an interval exactly twice as far
    assert found["twice"]["ci_low"] == pytest.approx(2 * found["x"]["ci_low"])
    assert found["flat"] == {"mean": 0.25, "ci_low": 0.25, "ci_high": 0.25}
    # the standard error of a uniform mean is 0.29 / sqrt(500) = 0.0129: the 95% interval spans ~4 of them
    assert found["x"]["ci_high"] - found["x"]["ci_low"] == pytest.approx(4 * 0.2887 / math.sqrt(500), rel=0.1)


def test_a_ratio_interval_is_around_the_ratio_of_totals() -> None:
    bits, lengths = np.array([4.0, 3.0, 10.0, np.nan]), np.array([2.0, 1.0, 5.0, 0.0])
    found = intervals({"novelty": bits}, counts={"novelty": lengths}, resamples=500)
    assert found["novelty"]["mean"] == pytest.approx(17 / 8)  # not the mean of 2, 3, 2
    assert found["novelty"]["ci_low"] >= 2.0 and found["novelty"]["ci_high"] <= 3.0


def test_identical_models_differ_by_nothing_and_are_not_significant() -> None:
    a = np.random.default_rng(1).random(300)
    found = pairwise_tests({"a": {"ndcg@10": a}, "b": {"ndcg@10": a.copy()}}, metrics=["ndcg@10"])
    (test,) = found["metrics"]["ndcg@10"]
    assert (test["mean_diff"], test["ci_low"], test["ci_high"]) == (0.0, 0.0, 0.0)
    assert test["p_value"] == test["p_holm"] == 1.0 and not test["significant"]
    assert (test["wins"], test["losses"], test["ties"]) == (0, 0, 300)


def test_a_planted_difference_is_found_and_a_null_one_is_not() -> None:
    rng = np.random.default_rng(2)
    base = rng.random(2000)
    noise = rng.normal(0, 0.3, size=1000)
    per_model = {
        "base": {"m": base},
        "better": {"m": base + 0.05 + rng.normal(0, 0.3, size=2000)},  # planted: +0.05
        "noisy": {"m": base + np.concatenate([noise, -noise])},  # mean difference exactly 0
    }
    found = {(t["a"], t["b"]): t for t in pairwise_tests(per_model, metrics=["m"])["metrics"]["m"]}
    planted = found["base", "better"]
    assert planted["significant"] and planted["ci_high"] < 0 and planted["p_holm"] < 0.01
    assert planted["ci_low"] < -0.05 < planted["ci_high"]
    null = found["base", "noisy"]
    assert not null["significant"] and null["ci_low"] < 0 < null["ci_high"] and null["p_value"] > 0.5
    # Holm: the adjusted p-values never fall below the raw ones, and never exceed Bonferroni's
    for test in found.values():
        assert test["p_value"] <= test["p_holm"] <= min(1.0, 3 * test["p_value"])


def test_pairs_resampled_by_cluster_are_counted_by_cluster() -> None:
    rng = np.random.default_rng(4)
    users = np.repeat(np.arange(40), 3)
    a, b = rng.random(120), rng.random(120)
    plain = pairwise_tests({"a": {"m": a}, "b": {"m": b}}, metrics=["m"])["metrics"]["m"][0]
    clustered = pairwise_tests({"a": {"m": a}, "b": {"m": b}}, metrics=["m"], clusters=users)["metrics"]["m"][
        0
    ]
    assert (plain["users"], plain["clusters"]) == (120, 120)
    assert (clustered["users"], clustered["clusters"]) == (120, 40)
    assert clustered["mean_diff"] == plain["mean_diff"]


def test_holm_on_the_textbook_example() -> None:
    # Holm (1979) as every textbook shows it (e.g. Wikipedia, "Holm-Bonferroni method"): four
    # hypotheses with p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05: sorted, 0.005 < 0.05/4 and
    # 0.01 < 0.05/3 are rejected, 0.03 > 0.05/2 stops the procedure.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert (adjusted < 0.05).tolist() == [True, False, False, True]
    # undefined tests are not part of the family; adjusted values are capped at 1
    np.testing.assert_allclose(holm([0.01, np.nan, 0.6]), [0.02, np.nan, 0.6])
    np.testing.assert_allclose(holm([0.5, 0.6, 0.7]), [1.0, 1.0, 1.0])


def test_the_bootstrap_p_value_is_the_interval_dual() -> None:
    assert bootstrap_p_value(np.zeros((10, 1))).tolist() == [1.0]
    assert bootstrap_p_value(np.ones((999, 1))).tolist() == [0.002]  # 2 * (0 + 1) / 1000
    # 30 of 1000 resamples at or below 0: p = 2 * 31 / 1001 > 0.05, and 0 is inside the 95% interval
    means = np.concatenate([np.full(30, -0.1), np.full(970, 0.1)])[:, None]
    assert bootstrap_p_value(means)[0] == pytest.approx(62 / 1001)
