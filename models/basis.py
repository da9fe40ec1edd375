"""Physically motivated basis functions of one scheduler step.

Every basis is a small pure numpy function of (batch features, model spec, hardware, TP)
returning **microseconds at nominal efficiency**: a coefficient of 1 means the hardware
runs at the datasheet peak (or the stated nominal overhead). The hierarchical model
multiplies each basis by a positive coefficient and sums them, so coefficients read as
inverse efficiencies or overhead multipliers.

Importing this module never imports PyMC: the simulator-side sampler uses it too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import numpy as np

from data_prep.specs import KV_BLOCK_TOKENS, HardwareSpec, ModelSpec

# 2: adds roofline_knee; 3: the knee sits at nominal achieved rates; 4: prefill attention
# counts each chunk's resident context, not only its own tokens; 5: adds sched_cache_misses
BASIS_SET_VERSION = "5"

# Nominal overheads (µs) that define the unit of the fixed-cost bases.
NOMINAL_RING_HOP_LATENCY_US = 3.0
NOMINAL_LAYER_LAUNCH_US = 5.0
NOMINAL_REQUEST_OVERHEAD_US = 20.0
NOMINAL_PREFILL_ADMISSION_US = 200.0
NOMINAL_STEP_OVERHEAD_US = 1000.0
NOMINAL_HBM_EFFICIENCY = 0.8
# Large-GEMM MFU on an H100: 0.60–0.65 for m ≥ 4096 tokens in the InferSim kernel table
# (data/kernels/h100/gemm_data.csv of the shared data), so a prefill chunk runs near it.
NOMINAL_GEMM_MFU = 0.62
NOMINAL_SCHED_STEP_US = 100.0
NOMINAL_SCHED_REQUEST_US = 2.0
NOMINAL_SCHED_TOKEN_US = 0.1
NOMINAL_SCHED_BLOCK_US = 1.0
NOMINAL_SCHED_ADMIT_US = 20.0
NOMINAL_SCHED_HASH_US_PER_TOKEN = 0.05
# A step the scheduler holds up lasts its CPU time plus building inputs and launching.
NOMINAL_HOST_LAUNCH_US = 50.0
# Soft max of GPU and host time: at equal times 2^(1/6) = 1.12 × either, the expected max
# of two times of which one carries ~0.3 log-sd of noise (the traced scheduler's jitter).
HOST_OVERLAP_POWER = 6.0


@dataclass(frozen=True)
class BatchFeatures:
    """What the scheduler knows about one step (or arrays of steps) before it runs.

    Outcomes of the step (finished / preempted requests) are deliberately absent.
    """

    decode_reqs: np.ndarray
    prefill_reqs: np.ndarray
    prefill_tokens: np.ndarray
    decode_tokens: np.ndarray
    kv_tokens: np.ndarray
    running_reqs: np.ndarray
    waiting_reqs: np.ndarray
    new_kv_blocks: np.ndarray

    # Step-dataset column each feature is read from.
    COLUMNS = {
        "decode_reqs": "batch.num_decode_reqs",
        "prefill_reqs": "batch.num_prefill_reqs",
        "prefill_tokens": "batch.prefill_tokens",
        "decode_tokens": "batch.decode_tokens",
        "kv_tokens": "kv_tokens",
        "running_reqs": "queue.running_depth",
        "waiting_reqs": "queue.waiting_depth",
        "new_kv_blocks": "new_kv_blocks",
    }

    @property
    def scheduled_tokens(self) -> np.ndarray:
        """Tokens the forward pass computes (cache-miss prefill plus decode)."""
        return self.prefill_tokens + self.decode_tokens

    @property
    def logit_rows(self) -> np.ndarray:
        """Requests whose last position goes through the LM head and sampler."""
        return self.decode_reqs + self.prefill_reqs

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> BatchFeatures:
        """From feature names (``decode_reqs=...``) or dataset columns; missing ones are 0.

        ``decode_tokens`` defaults to one per decode request, ``running_reqs`` to the
        requests in the batch and ``new_kv_blocks`` to the blocks the scheduled tokens
        fill, which is what a simulator knows of a step.
        """
        arrays: dict[str, np.ndarray] = {}
        for field in fields(cls):
            column = cls.COLUMNS[field.name]
            raw = values.get(field.name, values.get(column))
            if raw is not None:
                arrays[field.name] = np.atleast_1d(np.asarray(raw, dtype=float))
        size = max((a.shape[0] for a in arrays.values()), default=1)
        zeros = np.zeros(size)
        full = {name: np.broadcast_to(arrays.get(name, zeros), (size,)) for name in cls.COLUMNS}
        if "decode_tokens" not in arrays:
            full["decode_tokens"] = full["decode_reqs"]
        if "running_reqs" not in arrays:
            full["running_reqs"] = full["decode_reqs"] + full["prefill_reqs"]
        if "new_kv_blocks" not in arrays:
            full["new_kv_blocks"] = (
                full["prefill_tokens"] + full["decode_tokens"]
            ) / KV_BLOCK_TOKENS
        return cls(**{k: np.asarray(v, dtype=float) for k, v in full.items()})

    @classmethod
    def from_frame(cls, frame) -> BatchFeatures:
        """From a step DataFrame with the dataset's column names."""
        missing = [c for c in cls.COLUMNS.values() if c not in frame.columns]
        if missing:
            raise KeyError(f"step data lacks feature columns {missing}")
        return cls(
            **{
                name: frame[column].to_numpy(dtype=float, na_value=0.0)
                for name, column in cls.COLUMNS.items()
            }
        )


def expected_active_experts(spec: ModelSpec, tokens: np.ndarray) -> np.ndarray:
    """Distinct experts T tokens touch with uniform top-k routing: E·(1 − ((E−k)/E)^T)."""
    if not spec.is_moe:
        return np.ones_like(tokens, dtype=float)
    e, k = spec.num_experts, spec.experts_per_token
    return e * (1.0 - ((e - k) / e) ** np.maximum(tokens, 0.0))


# --- step cycle (GPU forward pass plus fixed costs) -------------------------------------


def weight_streaming_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Reading every weight a step touches once from HBM (µs at peak bandwidth).

    MoE models stream only the experts the batch activates.
    """
    experts = expected_active_experts(spec, x.scheduled_tokens)
    return spec.weight_bytes_per_gpu(tp, active_experts=experts) / hw.hbm_bytes_per_us


def linear_flops_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Linear-layer FLOPs at peak: 2·T·(active params per token)/TP plus the LM head for
    each logit row (µs). Not a basis itself; the roofline bases below are built from it."""
    per_layer = spec.attention_params_per_layer + spec.experts_per_token * spec.expert_params
    flops = 2.0 * x.scheduled_tokens * spec.num_layers * per_layer
    flops = flops + 2.0 * x.logit_rows * spec.vocab_size * spec.hidden_size
    return flops / tp / hw.flops_per_us


def linear_compute_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """GEMM time the weight stream cannot hide, at nominal achieved rates (µs):
    max(0, FLOPs/(peak·NOMINAL_GEMM_MFU) − weight bytes/(bandwidth·NOMINAL_HBM_EFFICIENCY)).

    With ``static_step`` (which carries the weight stream at the same efficiency) this
    makes a roofline, max(memory, compute). Its knee sits where the *achieved* rates cross,
    as on a real GPU: at peak rates it sits ~30% more tokens to the right, decode batches
    near it are priced by the wrong terms, and a replayed 7B at TP 1 ran 5% fast.
    """
    compute, memory = _achieved_roofline_us(x, spec, hw, tp)
    return np.maximum(0.0, compute - memory)


def roofline_knee_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Imperfect overlap of weight loads and math near the roofline knee:
    √(W² + C²) − max(W, C) for weight-stream time W and GEMM time C at nominal achieved
    rates, as in ``linear_compute_us`` (µs).

    Zero far from the knee, up to 0.41·W at it. Its coefficient sets how soft the knee
    is — 0 is the hard max(memory, compute), 1 a quadratic soft max — so the data decides:
    without it a soft knee (a decode batch of a few hundred tokens already paying for
    compute) is pushed into any other basis linear in tokens (all-reduce traffic came out
    10× its physics on the synthetic campaign) and mispriced for TP = 1.
    """
    compute, memory = _achieved_roofline_us(x, spec, hw, tp)
    return np.hypot(memory, compute) - np.maximum(memory, compute)


def _achieved_roofline_us(
    x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int
) -> tuple[np.ndarray, np.ndarray]:
    """(GEMM time, weight-stream time) at the nominal achieved rates, in µs."""
    compute = linear_flops_us(x, spec, hw, tp) / NOMINAL_GEMM_MFU
    memory = weight_streaming_us(x, spec, hw, tp) / NOMINAL_HBM_EFFICIENCY
    return compute, memory


def prefill_attention_us(
    x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int
) -> np.ndarray:
    """Causal attention FLOPs of the prefill chunks, 4·H·d_h·L·Σ(new·context)/TP (µs at peak).

    Per-request context is not traced. Each new token attends to its request's resident
    context (prefix-cache hits, earlier chunks; ``batch.prefill_tokens`` counts cache
    misses only), taken as the mean resident KV per running request, and causally to
    the earlier tokens of its own chunk, with chunks taken as equal: Σ(new·context) ≈
    P·kv_tokens/running + P²/(2·prefill requests). Against the synthetic campaign's true
    pairs (``benchmarks/synth_truth_by_workload.py``) the chunk term alone undercounts
    1.5× (roleplay) to 10× (general), row log-sd 0.23–1.33 by workload; with the
    resident context it is 0.4–0.9×, log-sd 0.10–0.35.
    """
    resident = x.kv_tokens / np.maximum(x.running_reqs, 1.0)
    chunk = x.prefill_tokens / (2.0 * np.maximum(x.prefill_reqs, 1.0))
    pairs = x.prefill_tokens * (resident + chunk)
    flops = 4.0 * spec.num_heads * spec.head_dim * spec.num_layers * pairs
    return flops / tp / hw.flops_per_us


def kv_read_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Reading the resident KV cache once during decode attention (µs at peak bandwidth)."""
    return spec.kv_bytes_per_token(tp) * x.kv_tokens / hw.hbm_bytes_per_us


def allreduce_bandwidth_us(
    x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int
) -> np.ndarray:
    """Ring all-reduce traffic: 2 per layer, T·d·2 bytes each, 2(TP−1)/TP over NVLink (µs)."""
    if tp <= 1:
        return np.zeros_like(x.scheduled_tokens)
    message = x.scheduled_tokens * spec.hidden_size * spec.dtype_bytes
    traffic = 2 * spec.num_layers * message * 2.0 * (tp - 1) / tp
    return traffic / hw.nvlink_bytes_per_us


def allreduce_latency_per_layer_us(tp: int) -> float:
    """Latency of a layer's two ring all-reduces: 2·(TP−1) hops each, nominal 3 µs a hop."""
    return 2 * 2 * (tp - 1) * NOMINAL_RING_HOP_LATENCY_US


def layer_sync_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Fixed per-layer cost: kernel launches (nominal 5 µs) plus the latency term of the
    α-β ring all-reduce model, which grows with the TP degree."""
    per_layer = NOMINAL_LAYER_LAUNCH_US + allreduce_latency_per_layer_us(tp)
    return np.full_like(x.scheduled_tokens, spec.num_layers * per_layer)


def request_overhead_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Per-request input preparation, sampling and output handling (nominal 20 µs each)."""
    return x.logit_rows * NOMINAL_REQUEST_OVERHEAD_US


def prefill_admission_us(
    x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int
) -> np.ndarray:
    """Host-side cost of each request with a prefill chunk in the step: input
    tensors, block tables and metadata built for it (nominal 200 µs each).

    Not in the default cycle set: on the real traces it trades off against
    ``linear_compute`` and leaves a second posterior mode that traps chains (max R-hat
    1.53 with it, 1.01 without).
    """
    return x.prefill_reqs * NOMINAL_PREFILL_ADMISSION_US


def step_overhead_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Fixed cost of one engine iteration outside the forward pass (nominal 1 ms)."""
    return np.full_like(x.scheduled_tokens, NOMINAL_STEP_OVERHEAD_US)


def static_step_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """What every step pays whatever its batch: the weight stream at 80% of peak
    bandwidth, the per-layer launch and all-reduce latency, and the per-step overhead.

    One basis, not three: within a run all three are the same constant, so only their sum
    is identified; splitting it needs many models, and NUTS on the split (three
    log-coefficients pinned to one sum) does not converge. Their fixed nominal ratio is
    what lets an unseen model's constant scale with its size, depth and TP.
    """
    return (
        weight_streaming_us(x, spec, hw, tp) / NOMINAL_HBM_EFFICIENCY
        + layer_sync_us(x, spec, hw, tp)
        + step_overhead_us(x, spec, hw, tp)
    )


# --- scheduler CPU time (the traced step.duration_us) -----------------------------------


def sched_fixed_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Fixed cost of one ``Scheduler.schedule()`` call (nominal 100 µs)."""
    return np.full_like(x.scheduled_tokens, NOMINAL_SCHED_STEP_US)


def sched_running_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Walking the running queue: per running request (nominal 2 µs each)."""
    return x.running_reqs * NOMINAL_SCHED_REQUEST_US


def sched_waiting_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Inspecting the waiting queue: per waiting request (nominal 2 µs each)."""
    return x.waiting_reqs * NOMINAL_SCHED_REQUEST_US


def sched_tokens_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Building per-token scheduler output (nominal 0.1 µs per scheduled token)."""
    return x.scheduled_tokens * NOMINAL_SCHED_TOKEN_US


def sched_new_requests_us(
    x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int
) -> np.ndarray:
    """Admitting requests with a prefill chunk: prompt block hashing and prefix-cache
    lookup over the whole prompt, cached or not (nominal 20 µs per request)."""
    return x.prefill_reqs * NOMINAL_SCHED_ADMIT_US


def sched_cache_misses_us(
    x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int
) -> np.ndarray:
    """Admitting requests that miss the prefix cache (nominal 20 µs each).

    On a full prefix-cache hit vLLM schedules only the prompt's last token (recomputed for
    its logits); a request with more new tokens than that allocates and fills blocks of its
    own. On the real traces (fast regime, against decode-only steps at the same queue
    depth) a one-token prefill adds nothing measurable to the scheduler's
    time and one with 2 to 500 cache-miss tokens ~120–200 µs, whatever their number.
    Per-request counts are not traced: at most one such request per token beyond each
    request's first, min(prefill requests, prefill tokens − prefill requests).
    """
    misses = np.maximum(x.prefill_tokens - x.prefill_reqs, 0.0)
    return np.minimum(x.prefill_reqs, misses) * NOMINAL_SCHED_ADMIT_US


def sched_kv_blocks_us(x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int) -> np.ndarray:
    """Allocating KV blocks for the step (nominal 1 µs per new 16-token block)."""
    return x.new_kv_blocks * NOMINAL_SCHED_BLOCK_US


def sched_prefix_hash_us(
    x: BatchFeatures, spec: ModelSpec, hw: HardwareSpec, tp: int
) -> np.ndarray:
    """Prefix-cache hashing of prefill tokens (nominal 0.05 µs per token)."""
    return x.prefill_tokens * NOMINAL_SCHED_HASH_US_PER_TOKEN


def host_bound_step_us(gpu_us, schedule_us):
    """Step time when the scheduler's CPU work overlaps the GPU's forward pass:
    a soft max of the GPU time and the scheduler time plus launch (µs).

    vLLM schedules step n + 1 while step n runs, so a step lasts the longer of the two;
    at large queues the scheduler's slow regime makes it the longer one. Written as
    longer · (1 + (shorter/longer)^p)^(1/p), which cannot overflow, with plain operators
    only, so the same function serves numpy arrays and PyTensor graphs.
    """
    host = schedule_us + NOMINAL_HOST_LAUNCH_US
    spread = abs(gpu_us - host)
    longer = 0.5 * (gpu_us + host + spread)
    shorter = 0.5 * (gpu_us + host - spread)
    ratio = shorter / longer
    return longer * (1.0 + ratio**HOST_OVERLAP_POWER) ** (1.0 / HOST_OVERLAP_POWER)


BasisFunction = Callable[[BatchFeatures, ModelSpec, HardwareSpec, int], np.ndarray]

BASIS_FUNCTIONS: dict[str, BasisFunction] = {
    "weights": weight_streaming_us,
    "linear_compute": linear_compute_us,
    "roofline_knee": roofline_knee_us,
    "prefill_attention": prefill_attention_us,
    "kv_read": kv_read_us,
    "allreduce_bw": allreduce_bandwidth_us,
    "layer_sync": layer_sync_us,
    "request_overhead": request_overhead_us,
    "prefill_admission": prefill_admission_us,
    "step_overhead": step_overhead_us,
    "static_step": static_step_us,
    "sched_fixed": sched_fixed_us,
    "sched_running": sched_running_us,
    "sched_waiting": sched_waiting_us,
    "sched_tokens": sched_tokens_us,
    "sched_new_requests": sched_new_requests_us,
    "sched_cache_misses": sched_cache_misses_us,
    "sched_kv_blocks": sched_kv_blocks_us,
    "sched_prefix_hash": sched_prefix_hash_us,
}

DEFAULT_BASIS_SETS: dict[str, tuple[str, ...]] = {
    "cycle": (
        "static_step",
        "linear_compute",
        "roofline_knee",
        "prefill_attention",
        "kv_read",
        "allreduce_bw",
        "request_overhead",
    ),
    "schedule": (
        "sched_fixed",
        "sched_running",
        "sched_waiting",
        "sched_new_requests",
        "sched_cache_misses",
        "sched_kv_blocks",
        "sched_prefix_hash",
    ),
}


def evaluate_bases(
    names: tuple[str, ...] | list[str],
    x: BatchFeatures,
    spec: ModelSpec,
    hw: HardwareSpec,
    tp: int,
) -> np.ndarray:
    """Matrix (steps × bases) of the named bases for steps that share one model and TP."""
    return np.column_stack([BASIS_FUNCTIONS[name](x, spec, hw, int(tp)) for name in names])
