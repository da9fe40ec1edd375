"""The likelihood's kernel: a mixture of Student-t densities of log step time.

Every component shares ν; each row has its own weights, means (in µs; the component's
location is their log) and scales. PyMC's ``pm.Mixture`` of ``pm.StudentT`` gives the
same density, but its graph, compiled by numba to scalar loops, spent most of a 31 ms
gradient on the ~100K rows of the synthetic campaign (``benchmarks/bench_gradient.py``).
Here one compiled kernel computes the density and all its partial derivatives with three
transcendentals per row and component (the log of the mean, a log, an exp), and the
gradient reuses them instead of differentiating the graph again. Those log and exp are
polynomials on the float's bits, not libm calls, and the kernel raises no Python errors
(``error_model="numpy"``), so its loops compile to SIMD code: 15 ms a gradient on those
rows, 20 ms with libm's scalar calls. The kernel is numba ``nopython`` code, not NumPy:
nutpie evaluates two chains' gradients in parallel threads, and NumPy code there would
make them queue for Python's lock (a NumPy version of this kernel took 29 ms a gradient
with two chains, 13 ms with one).
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
# Rows per block: the scratch of a block (a dozen arrays of 4 × 1,024) stays in L2 cache
# and is allocated once per call. A version with row-sized scratch took 39 ms a gradient
# instead of 15 (``benchmarks/bench_gradient.py``): fresh pages from the OS cost more
# than the math on this machine.
ROW_BLOCK = 1024


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


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _mixture_kernel(value, nu, weights, means, sigmas):
    """Per row: f_k = w_k (1 + t_k)^(−(ν+1)/2) / σ_k with t_k = ((y − log m_k) / σ_k)² / ν;
    the log density is log Σ f_k, and every partial follows from f_k / Σ f. The powers
    are scaled by the row's largest among weighted components, so none underflows; the
    partial in a zero weight is capped (the model's zero weights are constants).

    Rows go in blocks of ``ROW_BLOCK``, transposed to component-major scratch that stays
    in cache; the loops over a block have no calls and no branches that could raise, so
    LLVM turns them into SIMD code, log and exp included (:func:`_log_into`,
    :func:`_exp_into`).
    """
    rows, components = weights.shape
    half = 0.5 * (nu + 1.0)
    inv_nu = 1.0 / nu
    logp, d_nu = np.empty(rows), np.empty(rows)
    d_weights = np.empty((rows, components))
    d_means = np.empty((rows, components))
    d_sigmas = np.empty((rows, components))
    block = (components, ROW_BLOCK)
    w, m, s = np.empty(block), np.empty(block), np.empty(block)
    log_m, z_shrunk, t_shrunk = np.empty(block), np.empty(block), np.empty(block)
    exponent, scaled = np.empty(block), np.empty(block)
    top, total = np.empty(ROW_BLOCK), np.empty(ROW_BLOCK)
    nu_sum, log_total = np.empty(ROW_BLOCK), np.empty(ROW_BLOCK)
    bits, powers = np.empty(block, np.int64), np.empty(block)  # scratch of log and exp
    for first in range(0, rows, ROW_BLOCK):
        n = min(ROW_BLOCK, rows - first)
        y = value[first : first + n]
        for k in range(components):
            for j in range(n):
                w[k, j] = weights[first + j, k]
                m[k, j] = means[first + j, k]
                s[k, j] = sigmas[first + j, k]
        _log_into(m.reshape(-1), log_m.reshape(-1), bits.reshape(-1), powers.reshape(-1))
        for k in range(components):
            for j in range(n):
                z = (y[j] - log_m[k, j]) / s[k, j]
                t = z * z * inv_nu
                shrink = 1.0 / (1.0 + t)
                z_shrunk[k, j] = z * shrink  # the mean partial's core
                t_shrunk[k, j] = t * shrink  # the scale partial's core
                scaled[k, j] = 1.0 + t
        _log_into(scaled.reshape(-1), exponent.reshape(-1), bits.reshape(-1), powers.reshape(-1))
        top[:] = -np.inf
        for k in range(components):
            for j in range(n):
                exponent[k, j] *= -half  # log of (1 + t)^(−half)
                weighted_exponent = exponent[k, j] if w[k, j] > 0.0 else -np.inf
                top[j] = max(top[j], weighted_exponent)
        for k in range(components):
            for j in range(n):
                # capped: a zero-weight component far above the weighted ones would overflow
                scaled[k, j] = min(exponent[k, j] - top[j], MAX_EXPONENT)
        _exp_into(scaled.reshape(-1), scaled.reshape(-1), bits.reshape(-1))
        total[:] = 0.0
        nu_sum[:] = 0.0
        for k in range(components):
            for j in range(n):
                scaled[k, j] /= s[k, j]
                weighted = w[k, j] * scaled[k, j]
                total[j] += weighted
                nu_partial = half * t_shrunk[k, j] * inv_nu + 0.5 * exponent[k, j] / half
                nu_sum[j] += weighted * nu_partial
        _log_into(total, log_total, bits[0], powers[0])
        for j in range(n):
            logp[first + j] = top[j] + log_total[j]
            d_nu[first + j] = nu_sum[j] / total[j]
        for k in range(components):
            for j in range(n):
                responsibility = w[k, j] * scaled[k, j] / total[j]
                d_weights[first + j, k] = scaled[k, j] / total[j]
                d_means[first + j, k] = (
                    z_shrunk[k, j] * responsibility * 2.0 * half * inv_nu / (s[k, j] * m[k, j])
                )
                d_sigmas[first + j, k] = (
                    responsibility * (2.0 * half * t_shrunk[k, j] - 1.0) / s[k, j]
                )
    return logp, d_nu, d_weights, d_means, d_sigmas


# exp and log without libm calls, so loops over them vectorise; both within 2 ulp of libm.
LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k·LN2_HI is exact
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e00
SQRT2 = 1.4142135623730951
SMALLEST_NORMAL = 2.2250738585072014e-308
LARGEST_FINITE = 1.7976931348623157e308


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _exp_into(x, out, scratch):
    """out = exp(x) for contiguous 1-D arrays (out may be x; int64 scratch at least as
    long): x = k·ln 2 + r with |r| ≤ ln 2 / 2, exp(r) by its Taylor polynomial of degree
    12, 2^k from the bits. Below exp(−708) it returns ~2^−1022 rather than underflowing to
    0. Allocates nothing (see ``ROW_BLOCK``)."""
    size = x.size
    for i in range(size):
        xi = min(max(x[i], -708.0), 709.0)
        k = math.floor(xi * INV_LN2 + 0.5)
        r = (xi - k * LN2_HI) - k * LN2_LO
        p = 1.0 / 479001600.0
        for c in _EXP_TAYLOR:
            p = p * r + c
        scratch[i] = (np.int64(k) + 1023) << 52
        out[i] = p if x[i] == x[i] else np.nan  # the clamp above would hide a NaN
    two_to_k = scratch[:size].view(np.float64)
    for i in range(size):
        out[i] *= two_to_k[i]


_EXP_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(11, -1, -1))
_LOG_SERIES = tuple(1.0 / (2 * j + 1) for j in range(9, -1, -1))  # 2·atanh(s)/(2s) in s²


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _log_into(x, out, bits_scratch, float_scratch):
    """out = log(x) for contiguous 1-D arrays (int64 and float64 scratch at least as
    long): x = 2^e·m with m in [√½, √2), log m = 2·atanh((m − 1)/(m + 1)) by its series
    to s¹⁹. Zero, negative, subnormal, infinite and NaN inputs go to libm afterwards."""
    size = x.size
    bits = x.view(np.int64)
    exponent = float_scratch
    for i in range(size):
        exponent[i] = ((bits[i] >> 52) & 0x7FF) - 1023
        bits_scratch[i] = (bits[i] & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000
    mantissa = bits_scratch[:size].view(np.float64)
    for i in range(size):
        big = mantissa[i] > SQRT2
        mi = mantissa[i] * 0.5 if big else mantissa[i]
        e = exponent[i] + 1.0 if big else exponent[i]
        f = mi - 1.0
        s = f / (2.0 + f)
        s2 = s * s
        p = 0.0
        for c in _LOG_SERIES:
            p = p * s2 + c
        out[i] = e * LN2_HI + (e * LN2_LO + 2.0 * s * p)
    for i in range(size):
        xi = x[i]
        if not (xi >= SMALLEST_NORMAL and xi <= LARGEST_FINITE):
            out[i] = np.log(xi)


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
