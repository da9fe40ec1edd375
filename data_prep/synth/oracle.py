"""SYNTHETIC GROUND TRUTH latency oracle of the scheduler twin.

This module is the *hidden truth* the synthetic campaign is generated from: for every step it
draws the scheduler's CPU time (``step.duration_us``) and the GPU forward time, and from them
the step cycle time. It deliberately contains more structure than any fitted model will:

- weight streaming with a soft roofline against linear-layer FLOPs, MoE expert-load
  saturation (distinct experts touched by T tokens) and expert imbalance,
- CUDA-graph padding of decode-only batch sizes (and cheaper launches under graphs),
- attention: KV bytes read over the *true* per-request contexts, prefill attention FLOPs,
- tensor-parallel all-reduces (2 per layer, latency + NVLink bytes),
- per-layer, per-request and per-step overheads,
- a host-side scheduler with per-request / per-token / per-block / prefix-hashing costs and
  the large-batch "slow scheduler" regime seen in the real data (a hidden state switching on
  above a per-deployment running depth, costing ~1-2.5 us per resident KV block), which
  overlaps with the GPU, so the cycle is ``max(gpu + output processing, schedule + epsilon)``,
- heavy-tailed (Student-t) log-noise and rare stalls.

Its constants are its own (not those of any fitted model) and were tuned so that the synthetic
campaign matches the real H100 marginals (see ``data_prep.synth.calibration``).

NOTHING under ``models/`` (or any fitting code) may import this module: a model that sees the
truth it is evaluated against proves nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_prep.specs import HardwareSpec, ModelSpec

# CUDA-graph capture sizes of vLLM v1 (decode-only batches are padded up to one of these).
CUDA_GRAPH_SIZES: tuple[int, ...] = (1, 2, 4) + tuple(range(8, 520, 8))
_GRAPH_PAD = np.zeros(CUDA_GRAPH_SIZES[-1] + 1, dtype=np.int64)
for _i in range(len(_GRAPH_PAD)):
    _GRAPH_PAD[_i] = next(s for s in CUDA_GRAPH_SIZES if s >= _i)
GRAPH_PAD: tuple[int, ...] = tuple(int(x) for x in _GRAPH_PAD)


@dataclass(frozen=True)
class HostProfile:
    """Hidden host-side constants of one deployment (scheduler CPU behaviour)."""

    base_us: float = 45.0
    per_running_us: float = 5.0
    admission_us: float = 300.0  # prefix-cache lookup + allocation per newly admitted request
    regime_running: float = 64.0  # running depth where the slow regime is on half the time
    regime_width: float = 5.0
    regime_us_per_block: float = 1.5
    regime_us_per_waiting: float = 0.8
    regime_cap_us: float = math.inf  # the block cost saturates at this many us
    regime_waiting_weight: float = 0.05  # a waiting request counts this much of a running one


HOST_PROFILES: dict[str, HostProfile] = {
    "llama-2-7b": HostProfile(
        admission_us=900.0,
        regime_running=42.0,
        regime_width=6.0,
        regime_us_per_block=4.45,
        regime_cap_us=5000.0,
        regime_us_per_waiting=0.0,
    ),
    "llama-2-70b": HostProfile(
        admission_us=800.0,
        regime_running=45.0,
        regime_width=4.0,
        regime_us_per_block=2.0,
        regime_cap_us=14000.0,
    ),
    "mixtral-8x7b": HostProfile(
        base_us=80.0,
        per_running_us=6.0,
        admission_us=120.0,
        regime_running=135.0,
        regime_width=2.5,
        regime_us_per_block=2.3,
    ),
    "codellama-34b": HostProfile(
        admission_us=100.0,
        regime_running=70.0,
        regime_width=11.0,
        regime_us_per_block=2.2,
        regime_cap_us=22000.0,
        regime_us_per_waiting=8.0,
    ),
}

# GPU-side constants of the truth.
HBM_EFF_WEIGHTS = 0.82
HBM_EFF_KV = 0.85
LINEAR_MFU = 0.62
ATTN_MFU = 0.45
LAYER_LAUNCH_EAGER_US = 9.0
LAYER_LAUNCH_GRAPH_US = 2.5
ALLREDUCE_LATENCY_US = 6.5  # per (tp - 1)
NVLINK_EFF = 0.65
PER_REQUEST_US = 6.0  # sampling + metadata per request in the batch
PER_STEP_US = 420.0  # input preparation, synchronisation
OUTPUT_PROC_US = 120.0  # update_from_output, fixed part
OUTPUT_PROC_PER_REQ_US = 1.6
HOST_CYCLE_PAD_US = 40.0  # a host-bound cycle: the schedule plus launching the step
ROOFLINE_P = 2.0  # soft max of memory and compute time
GPU_NOISE_SIGMA = 0.012
SCHED_NOISE_SIGMA = 0.28
NOISE_DOF = 4.0
STALL_PROB = 0.001
STALL_RANGE = (5.0, 30.0)
SCHED_STALL_PROB = 0.002


class Oracle:
    """True step times of one deployment; call it once per step, in step order.

    ``oracle(features) -> (schedule_us, gpu_us, cycle_us)``; ``features`` is the twin's
    per-step dict (see ``data_prep.synth.twin``). Deterministic given ``rng``.
    """

    def __init__(
        self,
        spec: ModelSpec,
        hardware: HardwareSpec,
        tp: int,
        rng: np.random.Generator,
        host: HostProfile | None = None,
    ):
        self.spec = spec
        self.tp = tp
        self.rng = rng
        self.host = host or HOST_PROFILES.get(spec.name, HostProfile())
        hbm = hardware.hbm_bytes_per_us
        self._dense_w_us = spec.weight_bytes_per_gpu(tp, active_experts=0) / (hbm * HBM_EFF_WEIGHTS)
        self._expert_w_us = (
            spec.num_layers * spec.expert_params * spec.dtype_bytes / tp / (hbm * HBM_EFF_WEIGHTS)
        )
        flops = hardware.flops_per_us
        self._lin_us_per_token = 2.0 * spec.params_active_per_token / tp / (flops * LINEAR_MFU)
        self._kv_us_per_token = spec.kv_bytes_per_token(tp) / (hbm * HBM_EFF_KV)
        self._attn_us_per_pair = (
            4.0 * spec.num_heads * spec.head_dim * spec.num_layers / tp / (flops * ATTN_MFU)
        )
        if tp > 1:
            self._ar_lat_us = 2 * spec.num_layers * ALLREDUCE_LATENCY_US * (tp - 1)
            self._ar_us_per_token = (
                2
                * spec.num_layers
                * spec.hidden_size
                * spec.dtype_bytes
                * 2
                * (tp - 1)
                / tp
                / (hardware.nvlink_bytes_per_us * NVLINK_EFF)
            )
        else:
            self._ar_lat_us = 0.0
            self._ar_us_per_token = 0.0
        self._layers = spec.num_layers
        self._E = spec.num_experts
        self._k = spec.experts_per_token
        self._buf_n = 0
        self._refill()

    def _refill(self) -> None:
        n = 4096
        r = self.rng
        self._t_gpu = np.clip(r.standard_t(NOISE_DOF, n), -8, 8).tolist()
        self._t_sched = np.clip(r.standard_t(NOISE_DOF, n), -6, 6).tolist()
        self._u = r.random((n, 4)).tolist()
        self._buf_n = n
        self._pos = 0

    # -- pieces ---------------------------------------------------------------------------

    def gpu_us(self, f: dict, t_noise: float, u_stall: float, u_mag: float) -> float:
        tokens = f["batch.scheduled_tokens"]
        if tokens <= 0:
            return 0.0
        n_req = f["batch.num_prefill_reqs"] + f["batch.num_decode_reqs"]
        decode_only = f["batch.num_prefill_reqs"] == 0 and tokens <= CUDA_GRAPH_SIZES[-1]
        padded = GRAPH_PAD[tokens] if decode_only else tokens
        # weights, with MoE expert-load saturation
        w_us = self._dense_w_us + self._expert_w_us
        comp = self._lin_us_per_token * padded
        if self._E > 1:
            E, k = self._E, self._k
            active = E * (1.0 - ((E - k) / E) ** padded)
            w_us += self._expert_w_us * (active - 1.0)
            # the busiest expert sets the pace: imbalance shrinks as tokens per expert grow
            per_expert = padded * k / E
            comp *= 1.0 + 1.2 / math.sqrt(per_expert + 1.0)
        lin = (w_us**ROOFLINE_P + comp**ROOFLINE_P) ** (1.0 / ROOFLINE_P)
        attn = (
            self._kv_us_per_token * f["true.context_tokens"]
            + self._attn_us_per_pair * f["true.attn_pairs"]
        )
        comm = self._ar_lat_us + self._ar_us_per_token * padded if self.tp > 1 else 0.0
        launch = (LAYER_LAUNCH_GRAPH_US if decode_only else LAYER_LAUNCH_EAGER_US) * self._layers
        gpu = lin + attn + comm + launch + PER_REQUEST_US * n_req + PER_STEP_US
        gpu *= math.exp(GPU_NOISE_SIGMA * t_noise)
        if u_stall < STALL_PROB:
            gpu *= STALL_RANGE[0] + (STALL_RANGE[1] - STALL_RANGE[0]) * u_mag
        return gpu

    def schedule_us(self, f: dict, t_noise: float, u_regime: float, u_stall: float) -> float:
        h = self.host
        running = f["queue.running_depth"]
        waiting = f["queue.waiting_depth"]
        t = (
            h.base_us
            + h.per_running_us * running
            + 0.4 * min(waiting, 64)
            + 0.05 * f["batch.scheduled_tokens"]
            + 0.12 * f["batch.prefill_tokens"]
            + 1.2 * f["true.new_blocks"]
            + h.admission_us * f["true.admitted"]
        )
        load = running + h.regime_waiting_weight * waiting
        x = (load - h.regime_running) / h.regime_width
        p_on = 1.0 / (1.0 + math.exp(-x)) if x > -30 else 0.0
        if u_regime < p_on:
            blocks_us = h.regime_us_per_block * f["true.used_blocks"]
            if h.regime_cap_us < math.inf:
                blocks_us = h.regime_cap_us * (1.0 - math.exp(-blocks_us / h.regime_cap_us))
            t += blocks_us + h.regime_us_per_waiting * waiting
        t *= math.exp(SCHED_NOISE_SIGMA * t_noise)
        if u_stall < SCHED_STALL_PROB:
            t *= 4.0 + 6.0 * u_regime
        return max(t, 8.0)

    def __call__(self, f: dict) -> tuple[float, float, float]:
        if self._pos >= self._buf_n:
            self._refill()
        i = self._pos
        self._pos += 1
        u = self._u[i]
        sched = self.schedule_us(f, self._t_sched[i], u[0], u[1])
        gpu = self.gpu_us(f, self._t_gpu[i], u[2], u[3])
        n_req = f["batch.num_prefill_reqs"] + f["batch.num_decode_reqs"]
        if gpu > 0:
            busy_gpu = gpu + OUTPUT_PROC_US + OUTPUT_PROC_PER_REQ_US * n_req
            cycle = max(busy_gpu, sched + HOST_CYCLE_PAD_US)
        else:
            cycle = sched + HOST_CYCLE_PAD_US
        return sched, gpu, cycle
