"""Metrics against hand computations and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from diagnostics.metrics import (
    breakdown,
    coverage_curve,
    crps_from_samples,
    interval_coverage,
    load_terciles,
    mape,
    median_ape,
    p90_ape,
    pearson_r,
    pit_values,
    score,
)


def test_percentage_errors_by_hand():
    y = np.array([100.0, 200.0, 50.0, 10.0])
    point = np.array([110.0, 150.0, 50.0, 12.0])  # 10%, 25%, 0%, 20%
    assert mape(y, point) == pytest.approx(13.75)
    assert median_ape(y, point) == pytest.approx(15.0)
    assert p90_ape(y, point) == pytest.approx(np.quantile([10, 25, 0, 20], 0.9))


def test_pearson_r_and_constant_prediction():
    assert pearson_r([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson_r([1, 2, 3], [5, 5, 5]) is None


def test_interval_coverage_counts_closed_intervals():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert interval_coverage(y, [0, 2, 3.5, 5], [1, 3, 4, 6]) == pytest.approx(0.5)


def test_crps_matches_the_normal_closed_form():
    rng = np.random.default_rng(0)
    mu, sigma = 1.0, 2.0
    y = np.array([1.0, 3.0, -2.0])
    samples = rng.normal(mu, sigma, size=(40_000, 3))
    z = (y - mu) / sigma
    exact = sigma * (
        z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi)
    )
    assert np.allclose(crps_from_samples(y, samples), exact, atol=0.02)


def test_crps_of_a_point_mass_is_absolute_error():
    samples = np.full((5, 2), 3.0)
    assert np.allclose(crps_from_samples(np.array([1.0, 3.0]), samples), [2.0, 0.0])


def test_crps_pair_term_equals_brute_force():
    rng = np.random.default_rng(1)
    samples = rng.gamma(2.0, size=(30, 4))
    y = rng.gamma(2.0, size=4)
    brute = np.abs(samples - y).mean(0) - 0.5 * np.abs(
        samples[:, None, :] - samples[None, :, :]
    ).mean((0, 1))
    assert np.allclose(crps_from_samples(y, samples), brute)


def test_pit_and_coverage_curve_of_a_calibrated_forecast():
    rng = np.random.default_rng(2)
    y = rng.normal(size=4000)
    samples = rng.normal(size=(500, 4000))
    pit = pit_values(y, samples)
    assert 0.45 < pit.mean() < 0.55
    assert stats.kstest(pit, "uniform").pvalue > 0.001
    levels, cover = coverage_curve(y, samples)
    assert np.allclose(levels, np.arange(1, 10) / 10)
    assert np.allclose(cover, levels, atol=0.03)
    # too narrow a forecast undercovers
    _, narrow = coverage_curve(y, samples * 0.5)
    assert narrow[-1] < 0.75


def test_score_keys_and_nulls():
    y = np.array([10.0, 20.0])
    point_only = score(y, np.array([11.0, 18.0]))
    assert set(point_only) == {
        "n_rows",
        "mape",
        "median_ape",
        "p90_ape",
        "pearson_r",
        "coverage_50",
        "coverage_90",
        "crps",
    }
    assert point_only["coverage_90"] is None and point_only["crps"] is None
    assert point_only["mape"] == pytest.approx(10.0)
    full = score(y, y, np.tile(y, (3, 1)), y - 1, y + 1, [0, 0], [1, 100])
    assert full["coverage_50"] == 1.0 and full["coverage_90"] == 0.5 and full["crps"] == 0.0


def test_load_terciles():
    labels, edges = load_terciles(np.arange(9))
    assert edges == pytest.approx([8 / 3, 16 / 3])
    assert list(labels) == ["low"] * 3 + ["mid"] * 3 + ["high"] * 3


def test_breakdown_groups_rows():
    frame = pd.DataFrame(
        {
            "model": ["a", "a", "b", "b"],
            "phase": ["decode", "mixed", "decode", "decode"],
            "queue.running_depth": [1, 2, 3, 100],
            "y": [10.0, 10.0, 10.0, 10.0],
            "point": [11.0, 13.0, 10.0, 5.0],
        }
    )
    out = breakdown(frame, ("model", "phase", "load", "workload"))
    assert set(out) == {"model", "phase", "load"}  # no workload column: skipped
    assert out["model"]["a"]["mape"] == pytest.approx(20.0)
    assert out["model"]["b"]["mape"] == pytest.approx(25.0)
    assert out["phase"]["decode"]["n_rows"] == 3
    assert out["phase"]["mixed"]["mape"] == pytest.approx(30.0)
    assert list(out["load"]) == ["low", "mid", "high"]
    samples = np.tile(frame["y"].to_numpy(), (4, 1))
    with_samples = breakdown(frame, ("model",), samples=samples)
    assert with_samples["model"]["a"]["crps"] == 0.0


def test_score_crps_is_not_set_by_one_extreme_draw():
    rng = np.random.default_rng(0)
    y = np.full(50, 100.0)
    samples = rng.normal(100.0, 5.0, (1000, 50))
    calm = score(y, y, samples=samples)["crps"]
    samples[0, 0] = 1e18
    assert score(y, y, samples=samples)["crps"] == pytest.approx(calm, rel=0.05)
