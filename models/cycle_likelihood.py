"""The cycle likelihood in one compiled kernel: coefficients in, log density and its
gradient in every parameter out.

The same density as :func:`models.hierarchical.gap_mixture_components` scored by
:func:`models.mixture.mixture_logp`. Built that way, as a PyTensor graph around the
mixture kernel, it spent half of each gradient outside the kernel: three per-model
matrix products and their transposes, the mixture's means, weights and scales, the stall
component, and row-by-component arrays of partials passed between them (15.5 ms a
gradient on the ~100K rows of the synthetic campaign, 9.2 ms fused;
``benchmarks/bench_gradient.py``). Here a single loop over blocks of rows
builds each row's mixture from the coefficients, scores it with
:func:`models.mixture.mixture_block` and folds the partials back into the gradient of
the coefficients, workload scales, noise and stall parameters, so nothing row-sized
passes between operations.

:class:`CycleMixtureLogp` gives the per-row log density; its gradient is
:class:`CycleMixtureLogpGrad`, which computes the log density too. A graph rewrite lets
the forward node reuse that one, so a log density + gradient evaluation (what NUTS
calls) makes a single pass over the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import node_rewriter
from pytensor.link.numba.dispatch import basic as numba_basic
from pytensor.tensor.rewriting.basic import register_specialize

from models.mixture import cycle_kernel, student_t_log_normaliser


@dataclass(frozen=True)
class CycleRows:
    """The rows' data, laid out for the kernel: (bases, rows) and (components, rows)
    arrays are contiguous along rows so the kernel's loops over rows vectorise."""

    own_bases: np.ndarray  # (bases, rows) the traced step
    prefill_bases: np.ndarray  # (bases, rows) a typical untraced prefill step
    decode_bases: np.ndarray  # (bases, rows) a typical untraced decode step
    model_idx: np.ndarray  # (rows,) int64
    workload_idx: np.ndarray  # (rows,) int64
    gap_steps: np.ndarray  # (rows,) steps the observation averages over
    gap_weights: np.ndarray  # (components, rows) P(k untraced prefill steps)
    gap_counts: np.ndarray  # (components, rows) untraced prefill steps of component k

    def as_tensors(self) -> list:
        return [
            pt.as_tensor(np.ascontiguousarray(array))
            for array in (
                self.own_bases,
                self.prefill_bases,
                self.decode_bases,
                self.model_idx.astype(np.int64),
                self.workload_idx.astype(np.int64),
                self.gap_steps,
                self.gap_weights,
                self.gap_counts,
            )
        ]


N_DATA = 9  # inputs of the Ops that are data: the value, then CycleRows' arrays
PARAMETERS = ("beta", "scale", "sigma_floor", "sigma_step", "nu", "rate", "jump", "spread")


class CycleMixtureLogp(Op):
    """(log step time (rows,), CycleRows arrays, β (models, bases), workload scale,
    σ_floor (models,), σ_step (models,), ν, stall rate, stall jump J, stall spread) →
    per-row log density less the Student-t normalising constant."""

    __props__ = ()

    def make_node(self, *inputs) -> Apply:
        inputs = _as_inputs(inputs)
        return Apply(self, inputs, [inputs[0].type()])

    def perform(self, node, inputs, output_storage) -> None:
        output_storage[0][0] = cycle_kernel(None, *_kernel_args(inputs))[0]

    def connection_pattern(self, node):
        return [[False]] * N_DATA + [[True]] * len(PARAMETERS)

    def L_op(self, inputs, outputs, output_grads):  # noqa: N802 (PyTensor's name)
        gradients = CycleMixtureLogpGrad()(output_grads[0], *inputs)[1:]
        return [disconnected_type() for _ in range(N_DATA)] + list(gradients)


class CycleMixtureLogpGrad(Op):
    """(upstream (rows,), the inputs of :class:`CycleMixtureLogp`) → that Op's per-row
    log density, and Σ_rows upstream · ∂(log density) in each parameter."""

    __props__ = ()

    def make_node(self, upstream, *inputs) -> Apply:
        inputs = _as_inputs(inputs)
        upstream = pt.as_tensor(upstream).astype("float64")
        parameters = inputs[N_DATA:]
        return Apply(self, [upstream, *inputs], [inputs[0].type()] + [p.type() for p in parameters])

    def perform(self, node, inputs, output_storage) -> None:
        results = cycle_kernel(inputs[0], *_kernel_args(inputs[1:]))
        for storage, result in zip(output_storage, results, strict=True):
            storage[0] = np.asarray(result)


def _as_inputs(inputs) -> list:
    if len(inputs) != N_DATA + len(PARAMETERS):
        raise ValueError(f"expected {N_DATA} data arrays and the parameters {PARAMETERS}")
    data = [pt.as_tensor(v) for v in inputs[:N_DATA]]
    parameters = [pt.as_tensor(v).astype("float64") for v in inputs[N_DATA:]]
    expected_ndim = (2, 1, 1, 1, 0, 0, 0, 0)
    if tuple(p.ndim for p in parameters) != expected_ndim:
        raise ValueError(f"parameter ranks {expected_ndim} expected for {PARAMETERS}")
    return data + parameters


def cycle_mixture_logp(
    value, rows: CycleRows, beta, scale, sigma_floor, sigma_step, nu, rate, jump, spread
):
    """Per-row log density of log step times ``value`` (a PyTensor expression)."""
    unnormalised = CycleMixtureLogp()(
        value, *rows.as_tensors(), beta, scale, sigma_floor, sigma_step, nu, rate, jump, spread
    )
    return unnormalised + student_t_log_normaliser(nu)


def _kernel_args(inputs) -> list:
    return [*inputs[:N_DATA], *inputs[N_DATA : N_DATA + 4], *(float(x) for x in inputs[-4:])]


@node_rewriter([CycleMixtureLogp])
def share_forward_pass(fgraph, node):
    """A forward node whose gradient node is in the graph takes its log density from it."""
    beta = node.inputs[N_DATA]
    for client, _ in fgraph.clients[beta]:
        if isinstance(client.op, CycleMixtureLogpGrad) and all(
            a is b for a, b in zip(client.inputs[1:], node.inputs, strict=True)
        ):
            return [client.outputs[0]]
    return None


register_specialize(share_forward_pass)


@numba_basic.numba_funcify.register(CycleMixtureLogp)
def _numba_cycle_logp(op, node, **kwargs):
    @numba_basic.numba_njit
    def cycle_logp(
        y, own, pre, dec, model, workload, gap, gw, gc, beta, scale, sf, ss, nu, r, j, s
    ):
        return cycle_kernel(
            None, y, own, pre, dec, model, workload, gap, gw, gc, beta, scale, sf, ss,
            nu.item(), r.item(), j.item(), s.item(),
        )[0]  # fmt: skip

    return cycle_logp


@numba_basic.numba_funcify.register(CycleMixtureLogpGrad)
def _numba_cycle_logp_grad(op, node, **kwargs):
    @numba_basic.numba_njit
    def cycle_logp_grad(
        up, y, own, pre, dec, model, workload, gap, gw, gc, beta, scale, sf, ss, nu, r, j, s
    ):
        logp, d_beta, d_scale, d_sf, d_ss, d_nu, d_r, d_j, d_s = cycle_kernel(
            up, y, own, pre, dec, model, workload, gap, gw, gc, beta, scale, sf, ss,
            nu.item(), r.item(), j.item(), s.item(),
        )  # fmt: skip
        return (
            logp, d_beta, d_scale, d_sf, d_ss,
            np.asarray(d_nu), np.asarray(d_r), np.asarray(d_j), np.asarray(d_s),
        )  # fmt: skip

    return cycle_logp_grad
