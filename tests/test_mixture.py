"""The likelihood kernel equals PyMC's Student-t mixture, in value and gradient."""

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import stats
from scipy.special import logsumexp

from models.mixture import ROW_BLOCK, _exp_into, _log_into, mixture_logp, student_t_mixture


def random_mixture(rows: int, components: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    value = rng.normal(5.0, 0.4, rows)
    weights = rng.dirichlet(np.ones(components), rows)
    weights[::7, -1] = 0.0  # a component the row cannot have
    weights /= weights.sum(axis=1, keepdims=True)
    means = np.exp(rng.normal(5.0, 0.2, (rows, components)))
    sigma = np.exp(rng.normal(-2.0, 0.5, (rows, components)))
    return value, weights, means, sigma


@pytest.mark.parametrize(("components", "rows"), [(2, 300), (4, 300), (4, 2 * ROW_BLOCK + 77)])
def test_kernel_matches_pymc_mixture_in_value_and_gradient(components, rows):
    value, weights, means, sigma = random_mixture(rows, components)
    w, m, s, nu = pt.matrix("w"), pt.matrix("m"), pt.matrix("s"), pt.scalar("nu")
    columns = [[x[:, k] for k in range(components)] for x in (w, m, s)]
    fast = mixture_logp(value, nu, *columns)
    reference = pm.logp(
        pm.Mixture.dist(w=w, comp_dists=pm.StudentT.dist(nu=nu, mu=pt.log(m), sigma=s)), value
    )
    parameters = [w, m, s, nu]
    compiled = pytensor.function(
        parameters,
        [fast, reference, *pt.grad(fast.sum(), parameters), *pt.grad(reference.sum(), parameters)],
    )
    fast_logp, reference_logp, *grads = compiled(weights, means, sigma, 3.3)
    np.testing.assert_allclose(fast_logp, reference_logp, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(grads[:4], grads[4:], strict=True):
        assert np.all(np.isfinite(mine))  # PyMC's is NaN where a weight is 0
        finite = np.isfinite(theirs)
        np.testing.assert_allclose(mine[finite], theirs[finite], rtol=1e-8, atol=1e-10)


def test_vectorised_log_and_exp_match_libm():
    """The kernel's own log and exp (polynomials on the float's bits) are within 2 ulp of
    NumPy's over the whole range, and give libm's answer at the edges."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-708, 709, 20_000), rng.normal(0, 2, 20_000)])
    out = np.empty_like(x)
    _exp_into(x, out, np.empty(x.size, np.int64))
    np.testing.assert_allclose(out, np.exp(x), rtol=4.5e-16, atol=0)
    y = np.concatenate([np.exp(rng.uniform(-700, 700, 20_000)), rng.uniform(0.5, 2.0, 20_000)])
    _log_into(y, out, np.empty(y.size, np.int64), np.empty(y.size))
    np.testing.assert_allclose(out, np.log(y), rtol=4.5e-16, atol=2.3e-16)
    edges = np.array([0.0, -1.0, np.nan, np.inf, 1e-310, 1.0])
    logs = np.empty_like(edges)
    _log_into(edges, logs, np.empty(6, np.int64), np.empty(6))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_array_equal(logs, np.log(edges))
    exps = np.empty(3)
    _exp_into(np.array([np.nan, 0.0, -1000.0]), exps, np.empty(3, np.int64))
    assert np.isnan(exps[0]) and exps[1] == 1.0 and 0.0 < exps[2] < 4e-308  # ~exp(−708), not 0


def test_kernel_stays_finite_far_in_the_tails():
    """Rows far from every component (wild points early in warm-up) must not underflow
    to log 0: the kernel scales each row by its largest weighted power."""
    value = np.array([5.0, 5.0])
    weights = [np.array([0.5, 0.0]), np.array([0.5, 1.0])]
    means = [np.exp(np.array([-300.0, 5.0])), np.exp(np.array([-200.0, -400.0]))]
    sigmas = [np.full(2, 1e-6), np.full(2, 1e-6)]
    nu = 300.0
    fast = mixture_logp(value, nu, weights, means, sigmas).eval()
    log_densities = [
        stats.t.logpdf(value, df=nu, loc=np.log(m), scale=s)
        for m, s in zip(means, sigmas, strict=True)
    ]
    by_hand = logsumexp(np.column_stack(log_densities), b=np.column_stack(weights), axis=1)
    assert np.all(by_hand < -4000)  # PyMC's Mixture gives -inf here
    np.testing.assert_allclose(fast, by_hand, rtol=1e-8)


def test_prior_draws_follow_the_mixture():
    """The observed variable draws from PyMC's Mixture, so prior predictive checks and SBC
    simulate the density the kernel scores."""
    rows = 4000
    with pm.Model():
        student_t_mixture(
            "y",
            nu=pt.as_tensor(50.0),
            weights=[np.full(rows, 0.7), np.full(rows, 0.3)],
            means=[np.full(rows, np.exp(1.0)), np.full(rows, np.exp(3.0))],
            sigmas=[np.full(rows, 0.1), np.full(rows, 0.1)],
            observed=np.zeros(rows),
        )
        draws = pm.sample_prior_predictive(draws=1, random_seed=3).prior_predictive["y"].values
    high = np.mean(draws > 2.0)
    assert abs(high - 0.3) < 0.03
    np.testing.assert_allclose(np.median(draws[draws < 2.0]), 1.0, atol=0.02)
