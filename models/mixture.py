"""The likelihood's kernel: a mixture of Student-t densities of log step time.

Every component shares ν; each row has its own weights, means (in µs; the component's
location is their log) and scales. PyMC's ``pm.Mixture`` of ``pm.StudentT`` gives the
same density, but compiled to scalar loops without vectorised ``log``/``exp`` it spent
~25 ms of a 31 ms gradient on the ~100K rows of the synthetic campaign. Here the density
and all its partial derivatives come from one pass of NumPy's SIMD ufuncs, and the
gradient reuses them instead of differentiating the graph again.
"""

from __future__ import annotations

import functools
import threading
import warnings

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch import basic as numba_basic
from scipy.special import digamma, gammaln

CHUNK_ROWS = 8192  # rows per block: a block's temporaries stay in a core's L2 cache


class StudentTMixtureLogp(Op):
    """(value, ν, weights…, means…, sigmas…) → per-row log density and its partials.

    ``value`` (rows,) is log step time, ``nu`` a scalar; then ``n_components`` weight
    vectors, as many mean vectors (µs) and as many scale vectors, each (rows,). Separate
    vectors rather than a (rows, components) matrix: the graph needs no join, split or
    transpose, and the kernel stacks them as (components, rows), so that sums over
    components run along contiguous memory (NumPy reduces a short trailing axis ~30×
    slower). Outputs: log density (rows,), ∂/∂ν (rows,), then ∂/∂ each weight, mean and
    scale vector, in the inputs' order.
    """

    __props__ = ("n_components",)

    def __init__(self, n_components: int):
        self.n_components = n_components

    def make_node(self, value, nu, *params) -> Apply:
        if len(params) != 3 * self.n_components:
            raise ValueError(f"expected {3 * self.n_components} weight, mean and scale vectors")
        value, nu, *params = (pt.as_tensor(v).astype("float64") for v in (value, nu, *params))
        if nu.ndim != 0:
            raise ValueError("nu must be a scalar")
        if any(v.ndim != 1 for v in (value, *params)):
            raise ValueError("value, weights, means and scales must be vectors over rows")
        outputs = [value.type() for _ in range(2 + len(params))]
        return Apply(self, [value, nu, *params], outputs)

    def perform(self, node, inputs, output_storage) -> None:
        value, nu, *params = inputs
        k, n = self.n_components, len(value)
        buffers = _thread_buffers(k, n)
        weights, means, sigma = (
            np.stack(params[i * k : (i + 1) * k], out=buffers[i]) for i in range(3)
        )
        logp, d_nu, d_weights, d_means, d_sigma = buffers[3:]
        for lo in range(0, n, CHUNK_ROWS):
            rows = slice(lo, lo + CHUNK_ROWS)
            _mixture_chunk(
                value[rows],
                weights[:, rows],
                means[:, rows],
                sigma[:, rows],
                float(nu),
                [logp[rows], d_weights[:, rows], d_means[:, rows], d_sigma[:, rows], d_nu[rows]],
            )
        # the density may be an output of a compiled function: never hand out a buffer
        results = [logp.copy(), d_nu, *d_weights, *d_means, *d_sigma]
        for storage, result in zip(output_storage, results, strict=True):
            storage[0] = result

    def L_op(self, inputs, outputs, output_grads):  # noqa: N802 (PyTensor's name)
        upstream = output_grads[0]
        return [
            pt.zeros_like(inputs[0]),  # the value is observed, never a parameter
            pt.sum(upstream * outputs[1]),
            *(upstream * partial for partial in outputs[2:]),
        ]


_BUFFERS = threading.local()


def _thread_buffers(k: int, n: int) -> list[np.ndarray]:
    """Inputs stacked as (k, n) and every output, reused from call to call: fresh ~3 MB
    arrays on each gradient cost more in page faults than the arithmetic. One set per
    thread, because nutpie evaluates its chains' gradients in parallel threads."""
    cached = getattr(_BUFFERS, "arrays", None)
    if cached is None or cached[0].shape != (k, n):
        cached = [np.empty((k, n)) for _ in range(3)] + [np.empty(n), np.empty(n)]
        cached += [np.empty((k, n)) for _ in range(3)]
        _BUFFERS.arrays = cached
    return cached


def _mixture_chunk(value, weights, means, sigma, nu: float, outputs) -> None:
    """Log density and partials of a block of rows, written into ``outputs``."""
    logp, d_weights, d_means, d_sigma, d_nu = outputs
    half = 0.5 * (nu + 1.0)
    log_norm, d_log_norm = _normaliser(nu)
    z = value[None, :] - np.log(means)
    z /= sigma
    t = z * z
    t /= nu
    log1p_t = np.log1p(t)
    component = np.log(sigma)
    component += half * log1p_t
    np.subtract(log_norm, component, out=component)
    with np.errstate(divide="ignore"):  # a zero weight is a component the row cannot have
        weighted = np.log(weights)
    weighted += component
    top = weighted.max(axis=0, keepdims=True)
    weighted -= top
    shifted = np.exp(weighted, out=weighted)
    total = shifted.sum(axis=0, keepdims=True)
    np.add(top[0], np.log(total[0]), out=logp)
    responsibility = shifted
    responsibility /= total
    shrink = np.add(1.0, t, out=t)  # t is not needed past here except as t / (1 + t)
    np.reciprocal(shrink, out=shrink)
    t_shrunk = np.subtract(1.0, shrink)  # t / (1 + t)
    np.subtract(component, logp[None, :], out=component)
    np.exp(component, out=d_weights)
    np.multiply(responsibility, z, out=d_means)
    d_means *= shrink
    d_means *= 2.0 * half / nu
    d_means /= sigma
    d_means /= means
    np.multiply(t_shrunk, 2.0 * half, out=d_sigma)
    d_sigma -= 1.0
    d_sigma *= responsibility
    d_sigma /= sigma
    t_shrunk *= half / nu
    log1p_t *= 0.5
    t_shrunk -= log1p_t
    t_shrunk *= responsibility
    np.sum(t_shrunk, axis=0, out=d_nu)
    d_nu += d_log_norm


@functools.lru_cache(maxsize=64)
def _normaliser(nu: float) -> tuple[float, float]:
    """The Student-t log normalising constant and its derivative in ν (one per gradient,
    not one per block: SciPy's scalar calls cost microseconds each)."""
    half = 0.5 * (nu + 1.0)
    log_norm = gammaln(half) - gammaln(0.5 * nu) - 0.5 * np.log(nu * np.pi)
    return float(log_norm), float(0.5 * (digamma(half) - digamma(0.5 * nu)) - 0.5 / nu)


@numba_basic.numba_funcify.register(StudentTMixtureLogp)
def _numba_student_t_mixture_logp(op, node, **kwargs):
    """Run ``perform`` (NumPy) from nutpie's numba-compiled gradient, as PyTensor's
    object-mode fallback does, without its warning: NumPy's SIMD ufuncs are the point."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Numba will use object mode", UserWarning)
        return numba_basic.generate_fallback_impl(op, node, **kwargs)


def mixture_logp(value, nu, weights: list, means: list, sigmas: list):
    """Per-row log density of the mixture (a PyTensor expression); one weight, mean (µs)
    and scale vector per component."""
    return StudentTMixtureLogp(len(weights))(value, nu, *weights, *means, *sigmas)[0]


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
