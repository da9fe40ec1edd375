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
rows, 20 ms with libm's scalar calls. The cycle likelihood goes one step further: its
loop (:func:`cycle_kernel`, used by :mod:`models.cycle_likelihood`) also builds each row's
mixture from the coefficients and folds the partials back into them, 9 ms a gradient.
The kernels are numba ``nopython`` code, not NumPy:
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
    """The Op's loop: rows in blocks of ``ROW_BLOCK``, transposed to component-major
    scratch that stays in cache, scored by :func:`mixture_block`."""
    rows, components = weights.shape
    logp, d_nu = np.empty(rows), np.empty(rows)
    d_weights = np.empty((rows, components))
    d_means = np.empty((rows, components))
    d_sigmas = np.empty((rows, components))
    scratch = block_scratch(components)
    w, m, s = scratch[0], scratch[1], scratch[2]
    for first in range(0, rows, ROW_BLOCK):
        n = min(ROW_BLOCK, rows - first)
        for k in range(components):
            for j in range(n):
                w[k, j] = weights[first + j, k]
                m[k, j] = means[first + j, k]
                s[k, j] = sigmas[first + j, k]
        mixture_block(value[first : first + n], nu, scratch)
        block_logp, block_d_nu, d_w, d_m, d_s = scratch[3:8]
        for j in range(n):
            logp[first + j] = block_logp[j]
            d_nu[first + j] = block_d_nu[j]
        for k in range(components):
            for j in range(n):
                d_weights[first + j, k] = d_w[k, j]
                d_means[first + j, k] = d_m[k, j]
                d_sigmas[first + j, k] = d_s[k, j]
    return logp, d_nu, d_weights, d_means, d_sigmas


@numba.njit(cache=True, nogil=True, inline="always")
def block_scratch(components):
    """Scratch of one block for :func:`mixture_block`, allocated once per call (see
    ``ROW_BLOCK``): inputs w, m, s; outputs logp, ∂ν, ∂w, ∂m, ∂s; then working arrays."""
    block = (components, ROW_BLOCK)
    return (
        np.empty(block), np.empty(block), np.empty(block),
        np.empty(ROW_BLOCK), np.empty(ROW_BLOCK),
        np.empty(block), np.empty(block), np.empty(block),
        np.empty(block), np.empty(block), np.empty(block), np.empty(block),
        np.empty(ROW_BLOCK), np.empty(ROW_BLOCK), np.empty(ROW_BLOCK), np.empty(ROW_BLOCK),
        np.empty(block, np.int64), np.empty(block), np.empty(block),
    )  # fmt: skip


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def mixture_block(y, nu, scratch):
    """Log density and partials of the first ``len(y)`` rows of a block whose weights,
    means (µs) and scales are in the component-major ``scratch[0:3]``; writes the log
    density (less the normalising constant) and its partials in ν, weights, means and
    scales to ``scratch[3:8]``.

    Per row: f_k = w_k (1 + t_k)^(−(ν+1)/2) / σ_k with t_k = ((y − log m_k) / σ_k)² / ν;
    the log density is log Σ f_k, and every partial follows from f_k / Σ f. The powers
    are scaled by the row's largest among weighted components, so none underflows; the
    partial in a zero weight is capped (the model's zero weights are constants). The
    loops have no calls and no branches that could raise, so LLVM turns them into SIMD
    code, log and exp included (:func:`_log_into`, :func:`_exp_into`).
    """
    w, m, s, logp, d_nu, d_w, d_m, d_s = scratch[:8]
    log_m, z_shrunk, t_shrunk, exponent = scratch[8:12]
    top, total, nu_sum, log_total = scratch[12:16]
    bits, powers, inv_s = scratch[16], scratch[17], scratch[18]
    scaled = d_w  # its working values are done before it takes the weights' partials
    components, n = w.shape[0], len(y)
    half = 0.5 * (nu + 1.0)
    inv_nu = 1.0 / nu
    _log_into(m.reshape(-1), log_m.reshape(-1), bits.reshape(-1), powers.reshape(-1))
    for k in range(components):
        for j in range(n):
            inv_s[k, j] = 1.0 / s[k, j]  # divisions are the slowest SIMD operation here
            z = (y[j] - log_m[k, j]) * inv_s[k, j]
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
            scaled[k, j] *= inv_s[k, j]
            weighted = w[k, j] * scaled[k, j]
            total[j] += weighted
            nu_partial = half * t_shrunk[k, j] * inv_nu + 0.5 * exponent[k, j] / half
            nu_sum[j] += weighted * nu_partial
    _log_into(total, log_total, bits[0], powers[0])
    for j in range(n):
        logp[j] = top[j] + log_total[j]
        total[j] = 1.0 / total[j]  # from here on, its inverse
        d_nu[j] = nu_sum[j] * total[j]
    for k in range(components):
        for j in range(n):
            d_w[k, j] = scaled[k, j] * total[j]
            responsibility = w[k, j] * d_w[k, j] * inv_s[k, j]
            d_m[k, j] = z_shrunk[k, j] * responsibility * 2.0 * half * inv_nu / m[k, j]
            d_s[k, j] = responsibility * (2.0 * half * t_shrunk[k, j] - 1.0)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def cycle_kernel(
    upstream, log_y, own_bases, prefill_bases, decode_bases, model_idx, workload_idx,
    gap_steps, gap_weights, gap_counts, beta, scale, sigma_floor, sigma_step,
    nu, rate, jump, spread,
):  # fmt: skip
    """The loop of :mod:`models.cycle_likelihood`, here beside the functions it inlines:
    numba's cache checks only the file that defines a function.

    Per row: own/prefill/decode step times = workload scale · Σ_k β_{k,model} · basis_k;
    gap components c: mean (own + n_c·prefill + (gap − 1 − n_c)·decode) / gap with weight
    (1 − stall weight)·P(n_c), scale √(σ_floor² + σ_step² / gap); the stall component:
    mean E·(1 + (J − 1)/gap) with E the gap components' expected mean, weight
    1 − (1 − rate)^gap, scale √(σ² + (spread·J / (gap + J − 1))²). With ``upstream``
    None only the log density; otherwise also the gradient of Σ upstream · log density.

    ``reassoc`` lets the sums over rows vectorise; nothing here depends on the order of
    a sum beyond rounding.
    """
    n_bases, rows = own_bases.shape
    n_gap = gap_weights.shape[0]
    stall = n_gap  # index of the stall component
    logp = np.empty(rows)
    d_beta, d_scale = np.zeros_like(beta), np.zeros_like(scale)
    d_floor, d_step = np.zeros_like(sigma_floor), np.zeros_like(sigma_step)
    d_nu = d_rate = d_jump = d_spread = 0.0
    scratch = block_scratch(n_gap + 1)
    w, m, s = scratch[0], scratch[1], scratch[2]
    block_logp, block_d_nu, d_w, d_m, d_s = scratch[3:8]
    own, pre, dec = np.empty(ROW_BLOCK), np.empty(ROW_BLOCK), np.empty(ROW_BLOCK)
    sigma, expected, keep = np.empty(ROW_BLOCK), np.empty(ROW_BLOCK), np.empty(ROW_BLOCK)
    row_beta, up = np.empty(ROW_BLOCK), np.empty(ROW_BLOCK)
    bits = np.empty(ROW_BLOCK, np.int64)
    log_keep = math.log1p(-rate)
    for first in range(0, rows, ROW_BLOCK):
        n = min(ROW_BLOCK, rows - first)
        rows_of_block = slice(first, first + n)
        model, workload, gap = (
            model_idx[rows_of_block],
            workload_idx[rows_of_block],
            gap_steps[rows_of_block],
        )
        own[:] = 0.0
        pre[:] = 0.0
        dec[:] = 0.0
        for k in range(n_bases):
            for j in range(n):
                row_beta[j] = beta[model[j], k]
            xo, xp, xd = (
                own_bases[k, rows_of_block], prefill_bases[k, rows_of_block],
                decode_bases[k, rows_of_block],
            )  # fmt: skip
            for j in range(n):
                own[j] += row_beta[j] * xo[j]
                pre[j] += row_beta[j] * xp[j]
                dec[j] += row_beta[j] * xd[j]
        for j in range(n):
            row_scale = scale[workload[j]]
            own[j] *= row_scale
            pre[j] *= row_scale
            dec[j] *= row_scale
            floor, step = sigma_floor[model[j]], sigma_step[model[j]]
            sigma[j] = math.sqrt(floor * floor + step * step / gap[j])
            keep[j] = gap[j] * log_keep
        _exp_into(keep, keep, bits)  # (1 − rate)^gap: no step of the gap stalled
        expected[:] = 0.0
        for c in range(n_gap):
            pc, nc = gap_weights[c, rows_of_block], gap_counts[c, rows_of_block]
            for j in range(n):
                untraced = gap[j] - 1.0
                mean = (own[j] + nc[j] * pre[j] + (untraced - nc[j]) * dec[j]) / gap[j]
                m[c, j] = mean
                w[c, j] = keep[j] * pc[j]
                s[c, j] = sigma[j]
                expected[j] += pc[j] * mean
        for j in range(n):
            m[stall, j] = expected[j] * (1.0 + (jump - 1.0) / gap[j])
            w[stall, j] = 1.0 - keep[j]
            shift = spread * jump / (gap[j] + jump - 1.0)
            s[stall, j] = math.sqrt(sigma[j] * sigma[j] + shift * shift)
        mixture_block(log_y[rows_of_block], nu, scratch)
        logp[rows_of_block] = block_logp[:n]
        if upstream is None:
            continue
        # Fold the partials back. Reuse own/pre/dec for ∂/∂(own, prefill, decode) after
        # taking what the scale's partial needs from them.
        for j in range(n):
            up[j] = upstream[first + j]
            d_nu += up[j] * block_d_nu[j]
        for j in range(n):
            g = gap[j]
            d_stall_mean = d_m[stall, j] * up[j]
            d_stall_sigma = d_s[stall, j] * up[j]
            stall_shift = spread * jump / (g + jump - 1.0)
            d_shift = d_stall_sigma * stall_shift / s[stall, j]
            d_jump += d_stall_mean * expected[j] / g + d_shift * spread * (g - 1.0) / (
                (g + jump - 1.0) * (g + jump - 1.0)
            )
            d_spread += d_shift * jump / (g + jump - 1.0)
            d_stall_weight = d_w[stall, j] * up[j]
            d_expected = d_stall_mean * (1.0 + (jump - 1.0) / g)
            d_sigma = d_stall_sigma * sigma[j] / s[stall, j]
            d_own = d_pre = d_dec = 0.0
            for c in range(n_gap):
                pc, nc = gap_weights[c, first + j], gap_counts[c, first + j]
                d_stall_weight -= pc * d_w[c, j] * up[j]
                d_mean = (d_m[c, j] * up[j] + d_expected * pc) / g
                d_own += d_mean
                d_pre += d_mean * nc
                d_dec += d_mean * (g - 1.0 - nc)
                d_sigma += d_s[c, j] * up[j]
            d_rate += d_stall_weight * g * keep[j] / (1.0 - rate)
            floor, step = sigma_floor[model[j]], sigma_step[model[j]]
            d_floor[model[j]] += d_sigma * floor / sigma[j]
            d_step[model[j]] += d_sigma * step / (g * sigma[j])
            row_scale = scale[workload[j]]
            d_scale[workload[j]] += (d_own * own[j] + d_pre * pre[j] + d_dec * dec[j]) / row_scale
            own[j], pre[j], dec[j] = d_own * row_scale, d_pre * row_scale, d_dec * row_scale
        _fold_into_beta(d_beta, model, own, pre, dec, own_bases, prefill_bases, decode_bases, first)
    return logp, d_beta, d_scale, d_floor, d_step, d_nu, d_rate, d_jump, d_spread


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _fold_into_beta(
    d_beta, model, d_own, d_pre, d_dec, own_bases, prefill_bases, decode_bases, first
):
    """d_beta[m, k] += Σ over the block's rows of model m of the rows' partials times
    their bases; a sum per run of rows of one model, so the sums vectorise."""
    n = len(model)
    start = 0
    while start < n:
        end = start + 1
        while end < n and model[end] == model[start]:
            end += 1
        rows = slice(first + start, first + end)
        for k in range(d_beta.shape[1]):
            xo, xp, xd = own_bases[k, rows], prefill_bases[k, rows], decode_bases[k, rows]
            total = 0.0
            for j in range(end - start):
                total += (
                    d_own[start + j] * xo[j] + d_pre[start + j] * xp[j] + d_dec[start + j] * xd[j]
                )
            d_beta[model[start], k] += total
        start = end


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
    return StudentTMixtureLogp()(value, nu, *stacked)[0] + student_t_log_normaliser(nu)


def student_t_log_normaliser(nu):
    """log Γ((ν+1)/2) − log Γ(ν/2) − ½ log(νπ): what the kernels leave out of the density."""
    return pt.gammaln(0.5 * (nu + 1.0)) - pt.gammaln(0.5 * nu) - 0.5 * pt.log(nu * np.pi)


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
        return student_t_mixture_dist(nu, params[:k], params[k : 2 * k], params[2 * k :], size=size)

    return pm.CustomDist(
        name, nu, *weights, *means, *sigmas, dist=dist, logp=logp, observed=observed
    )


def student_t_mixture_dist(nu, weights: list, means: list, sigmas: list, size=None):
    """The mixture as a PyMC distribution, to draw from."""
    weights, means, sigmas = (pt.stack(list(x), axis=-1) for x in (weights, means, sigmas))
    components = pm.StudentT.dist(nu=nu, mu=pt.log(means), sigma=sigmas)
    return pm.Mixture.dist(w=weights, comp_dists=components, size=size)
