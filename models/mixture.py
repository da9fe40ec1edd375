"""The likelihood's kernel: a mixture of Student-t densities of log step time.

Every component shares ν; each row has its own weights, means (in µs; the component's
location is their log) and scales. PyMC's ``pm.Mixture`` of ``pm.StudentT`` gives the
same density, but its graph, compiled by numba to scalar loops, spent most of a 31 ms
gradient on the ~100K rows of the synthetic campaign (``benchmarks/bench_gradient.py``).
Here one compiled loop computes the density and all its partial derivatives with three
transcendental calls per row and component (the log of the mean, log1p, exp), and the
gradient reuses them instead of differentiating the graph again. The loop is numba
``nopython`` code, not NumPy: nutpie evaluates two chains' gradients in parallel threads,
and NumPy code there would make them queue for Python's lock (measured: 41 ms a gradient
with two chains vs 15 ms with one).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch import basic as numba_basic

MAX_EXPONENT = 600.0  # exp(600) / σ stays finite for any σ > 1e-47


class StudentTMixtureLogp(Op):
    """(value, ν, weights, means, sigmas) → per-row log density (without the Student-t
    normalising constant) and its partials.

    ``value`` (rows,) is log step time, ``nu`` a scalar, ``weights``, ``means`` (µs) and
    ``sigmas`` (rows, components). Outputs: the log density less log Γ((ν+1)/2) −
    log Γ(ν/2) − ½ log(νπ), which :func:`mixture_logp` adds in the graph (rows,); its
    partial in ν (rows,); and its partials in weights, means and sigmas (rows, components).
    """

    __props__ = ()

    def make_node(self, value, nu, weights, means, sigmas) -> Apply:
        value, nu, weights, means, sigmas = (
            pt.as_tensor(v).astype("float64") for v in (value, nu, weights, means, sigmas)
        )
        if value.ndim != 1 or nu.ndim != 0 or {weights.ndim, means.ndim, sigmas.ndim} != {2}:
            raise ValueError("value (rows,), nu scalar, weights/means/sigmas (rows, components)")
        matrix = pt.matrix(dtype="float64")
        outputs = [value.type(), value.type(), matrix.type(), matrix.type(), matrix.type()]
        return Apply(self, [value, nu, weights, means, sigmas], outputs)

    def perform(self, node, inputs, output_storage) -> None:
        value, nu, weights, means, sigmas = inputs
        results = _mixture_kernel(value, float(nu), weights, means, sigmas)
        for storage, result in zip(output_storage, results, strict=True):
            storage[0] = result

    def L_op(self, inputs, outputs, output_grads):  # noqa: N802 (PyTensor's name)
        upstream = output_grads[0]
        per_row = upstream[:, None]
        return [
            pt.zeros_like(inputs[0]),  # the value is observed, never a parameter
            pt.sum(upstream * outputs[1]),
            per_row * outputs[2],
            per_row * outputs[3],
            per_row * outputs[4],
        ]


@numba.njit(cache=True, nogil=True)
def _mixture_kernel(value, nu, weights, means, sigmas):
    """Per row: f_k = w_k (1 + t_k)^(−(ν+1)/2) / σ_k with t_k = ((y − log m_k) / σ_k)² / ν;
    the log density is log Σ f_k, and every partial follows from f_k / Σ f. The powers
    are scaled by the row's largest among weighted components, so none underflows; the
    partial in a zero weight is capped (the model's zero weights are constants)."""
    rows, components = weights.shape
    half = 0.5 * (nu + 1.0)
    inv_nu = 1.0 / nu
    logp, d_nu = np.empty(rows), np.empty(rows)
    d_weights = np.empty((rows, components))
    d_means = np.empty((rows, components))
    d_sigmas = np.empty((rows, components))
    for i in range(rows):
        top = -np.inf
        for k in range(components):
            z = (value[i] - math.log(means[i, k])) / sigmas[i, k]
            t = z * z * inv_nu
            shrink = 1.0 / (1.0 + t)
            exponent = half * math.log(shrink)  # log of (1 + t)^(−half)
            d_weights[i, k] = exponent  # scratch until the total is known
            d_means[i, k] = z * shrink
            d_sigmas[i, k] = t * shrink
            if weights[i, k] > 0.0 and exponent > top:
                top = exponent
        total = 0.0
        nu_sum = 0.0
        for k in range(components):
            exponent = d_weights[i, k]
            # capped: a zero-weight component far above the weighted ones would overflow
            scaled = math.exp(min(exponent - top, MAX_EXPONENT)) / sigmas[i, k]
            d_weights[i, k] = scaled
            weighted = weights[i, k] * scaled
            total += weighted
            nu_sum += weighted * (half * d_sigmas[i, k] * inv_nu + 0.5 * exponent / half)
        inverse = 1.0 / total
        logp[i] = top + math.log(total)
        d_nu[i] = nu_sum * inverse
        for k in range(components):
            responsibility = weights[i, k] * d_weights[i, k] * inverse
            d_weights[i, k] *= inverse
            d_means[i, k] *= responsibility * 2.0 * half * inv_nu / (sigmas[i, k] * means[i, k])
            d_sigmas[i, k] = responsibility * (2.0 * half * d_sigmas[i, k] - 1.0) / sigmas[i, k]
    return logp, d_nu, d_weights, d_means, d_sigmas


@numba_basic.numba_funcify.register(StudentTMixtureLogp)
def _numba_student_t_mixture_logp(op, node, **kwargs):
    """nutpie's compiled gradient calls the loop directly, without entering Python."""

    @numba_basic.numba_njit
    def student_t_mixture_logp(value, nu, weights, means, sigmas):
        return _mixture_kernel(value, nu.item(), weights, means, sigmas)

    return student_t_mixture_logp


def mixture_logp(value, nu, weights: list, means: list, sigmas: list):
    """Per-row log density of the mixture (a PyTensor expression); one weight, mean (µs)
    and scale vector per component."""
    stacked = (pt.stack(list(x), axis=-1) for x in (weights, means, sigmas))
    unnormalised = StudentTMixtureLogp()(value, nu, *stacked)[0]
    half = 0.5 * (nu + 1.0)
    return unnormalised + pt.gammaln(half) - pt.gammaln(0.5 * nu) - 0.5 * pt.log(nu * np.pi)


def student_t_mixture(name: str, nu, weights: list, means: list, sigmas: list, observed):
    """Observed log step times as a Student-t mixture: the fast kernel scores them, PyMC's
    ``Mixture`` draws them (prior predictive checks, SBC)."""
    k = len(weights)
    if not len(means) == len(sigmas) == k:
        raise ValueError("one weight, mean and scale per component")

    def logp(value, nu, *params):
        return mixture_logp(value, nu, params[:k], params[k : 2 * k], params[2 * k :])

    def dist(nu, *params_and_size):
        *params, size = params_and_size
        weights, means, sigmas = (pt.stack(params[i * k : (i + 1) * k], axis=-1) for i in range(3))
        components = pm.StudentT.dist(nu=nu, mu=pt.log(means), sigma=sigmas)
        return pm.Mixture.dist(w=weights, comp_dists=components, size=size)

    return pm.CustomDist(
        name, nu, *weights, *means, *sigmas, dist=dist, logp=logp, observed=observed
    )
