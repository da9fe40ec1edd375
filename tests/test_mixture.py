"""The likelihood kernel equals PyMC's Student-t mixture, in value and gradient."""

import threading

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest

from models.mixture import CHUNK_ROWS, StudentTMixtureLogp, mixture_logp, student_t_mixture


def random_mixture(rows: int, components: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    value = rng.normal(5.0, 0.4, rows)
    weights = rng.dirichlet(np.ones(components), rows)
    weights[::7, -1] = 0.0  # a component the row cannot have
    weights /= weights.sum(axis=1, keepdims=True)
    means = np.exp(rng.normal(5.0, 0.2, (rows, components)))
    sigma = np.exp(rng.normal(-2.0, 0.5, (rows, components)))
    return value, weights, means, sigma


@pytest.mark.parametrize("components", [2, 4])
def test_kernel_matches_pymc_mixture_in_value_and_gradient(components):
    rows = CHUNK_ROWS + 37  # crosses a block boundary
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


def test_kernel_is_safe_to_call_from_parallel_threads():
    """nutpie evaluates two chains' gradients at once; the kernel's buffers are per thread."""
    op = StudentTMixtureLogp(3)
    inputs = []
    for seed in (1, 2):
        value, weights, means, sigma = random_mixture(20_000, 3, seed)
        inputs.append([value, np.array(4.0), *weights.T, *means.T, *sigma.T])
    node = op.make_node(*inputs[0])

    def run(args):
        storage = [[None] for _ in node.outputs]
        op.perform(node, args, storage)
        return [s[0].copy() for s in storage]

    expected = [run(args) for args in inputs]
    got: dict[int, list] = {}

    def worker(i):
        for _ in range(20):
            result = run(inputs[i])
            if any(not np.array_equal(a, b) for a, b in zip(result, expected[i], strict=True)):
                got[i] = result
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not got, "a thread saw another thread's numbers"


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
