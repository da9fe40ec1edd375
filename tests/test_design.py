"""Cycle observations: the design describes a gap's untraced steps; the predictive uses it."""

import numpy as np
import pandas as pd
import pytest

from inference.predictive import PosteriorDraws, StallDraws, predictive_draws
from models.design import gap_templates, neighbour_mean
from models.hierarchical import gap_composition


def _run(prefill_tokens, run="r0"):
    return pd.DataFrame(
        {
            "experiment_id": run,
            "step.id": np.arange(len(prefill_tokens)) * 10,
            "batch.prefill_tokens": prefill_tokens,
        }
    )


def test_templates_separate_prefill_from_decode_neighbours():
    steps = _run([0, 512, 0, 0, 512, 0, 0, 0, 512, 0, 0, 0])
    prefill = steps["batch.prefill_tokens"].to_numpy(dtype=float)
    bases = np.column_stack([np.ones(len(steps)), prefill])  # (constant, prefill tokens)
    share, prefill_tpl, decode_tpl = gap_templates(bases, steps, window=2)
    assert np.all(prefill_tpl[:, 1] == 512) and np.all(decode_tpl[:, 1] == 0)
    # row 2: neighbours 0, 512 | 0, 512 → 2 of 4, shrunk towards the run's 3/12
    assert share[2] == pytest.approx((2 + 2 * 0.25) / (4 + 2))
    # a row whose neighbourhood has no prefill step keeps the run's prefill template
    assert share[10] < share[2]


def test_templates_never_mix_runs():
    steps = pd.concat([_run([0, 0, 0, 0], "a"), _run([900, 900, 900, 900], "b")])
    steps = steps.reset_index(drop=True)
    bases = steps[["batch.prefill_tokens"]].to_numpy(dtype=float)
    share, prefill_tpl, decode_tpl = gap_templates(bases, steps, window=3)
    assert np.all(share[:4] == 0) and np.all(share[4:] == 1)
    assert np.all(decode_tpl[:4] == 0) and np.all(prefill_tpl[4:] == 900)


def test_neighbour_schedule_excludes_the_row_and_stays_in_its_run():
    steps = pd.concat([_run([0, 0, 0], "a"), _run([0, 0], "b"), _run([0], "c")])
    steps = steps.reset_index(drop=True).iloc[::-1]  # row order must not matter
    traced = np.array([1.0, 2.0, 4.0, 10.0, 30.0, 7.0])[::-1]
    got = neighbour_mean(traced, steps, window=1)
    np.testing.assert_allclose(got, np.array([2.0, 2.5, 2.0, 30.0, 10.0, 7.0])[::-1])


class _Gaps:
    def __init__(self, gap, share):
        self.gap_steps = np.asarray(gap, dtype=float)
        self.prefill_share = np.asarray(share, dtype=float)

    @property
    def untraced_steps(self):
        return self.gap_steps - 1


def test_gap_composition_keeps_the_binomial_mean():
    gaps = _Gaps([1, 2, 3, 10, 32], [0.3, 0.3, 0.5, 0.12, 0.4])
    weights, counts = gap_composition(gaps)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(
        (weights * counts).sum(axis=1), gaps.untraced_steps * gaps.prefill_share
    )
    assert np.all(counts <= gaps.untraced_steps[:, None])


def _draws(n, stall=None):
    return PosteriorDraws(
        basis_names=("a", "b"),
        models=("m",),
        workloads=("w",),
        log_beta_population=np.zeros((n, 2)),
        a_moe=np.zeros((n, 2)),
        log_beta=np.zeros((n, 1, 2)),
        workload_effect=np.zeros((n, 1)),
        sigma_floor=np.zeros((n, 1)),
        sigma_step=np.full((n, 1), 1e-6),
        nu=np.full(n, 30.0),
        model_sd=np.zeros(2),
        moe_sd=np.zeros(2),
        workload_sd=0.0,
        stall=stall,
    )


def test_gap_predictive_mean_counts_untraced_prefill_and_stalls():
    n, rows = 4000, 3
    own = np.array([[10.0, 0.0]] * rows)  # a decode step costs 10, a prefill step 10 + 90
    prefill, decode = np.array([[10.0, 90.0]] * rows), np.array([[10.0, 0.0]] * rows)
    gap, share = np.array([1.0, 10.0, 10.0]), np.array([0.2, 0.2, 0.0])
    labels = np.full(rows, "m"), np.full(rows, "dense"), np.full(rows, "w")
    rng = np.random.default_rng(0)
    plain = predictive_draws(
        _draws(n), own, *labels, gap, rng, gap_composition=(share, prefill, decode)
    )
    expected = (10 + (gap - 1) * (10 + share * 90)) / gap
    np.testing.assert_allclose(plain.mean(axis=0), expected, rtol=0.02)
    assert plain[:, 0].std() < 1e-3  # a single step has no untraced steps
    stall = StallDraws(np.full(n, 0.05), np.full(n, np.log(5.0)), np.zeros(n))
    stalled = predictive_draws(
        _draws(n, stall), own, *labels, gap, rng, gap_composition=(share, prefill, decode)
    )
    # one stalled step of a gap adds (J − 1)/gap of a typical step; P = 1 − 0.95^gap
    inflation = 1 + (1 - 0.95**gap) * 4 / gap
    np.testing.assert_allclose(stalled.mean(axis=0), expected * inflation, rtol=0.03)
