"""Each basis function against a hand computation for one model (Llama-2-70B, TP4)."""

import numpy as np
import pytest

from data_prep.specs import get_model_spec, load_hardware
from models import basis

SPEC = get_model_spec("llama-2-70b")
HW = load_hardware()
TP = 4
# Two steps: a decode-only batch and a mixed one with a 2,000-token prefill chunk.
X = basis.BatchFeatures.from_mapping(
    {
        "decode_reqs": [64, 8],
        "prefill_reqs": [0, 2],
        "prefill_tokens": [0, 2000],
        "decode_tokens": [64, 8],
        "kv_tokens": [40000, 10000],
        "running_reqs": [64, 10],
        "waiting_reqs": [3, 0],
        "new_kv_blocks": [4, 126],
    }
)
L, D, V = 80, 8192, 32000
ATTN = D * (8192 + 2 * 1024) + 8192 * D
PER_LAYER = ATTN + 3 * D * 28672
WEIGHT_BYTES = (L * PER_LAYER + V * D) * 2 / TP


def test_weight_streaming():
    expected = WEIGHT_BYTES / 3.35e6  # bytes / (bytes per µs)
    np.testing.assert_allclose(basis.weight_streaming_us(X, SPEC, HW, TP), [expected] * 2)


def _linear_flops_us():
    tokens = np.array([64, 2008])
    flops = 2 * tokens * L * PER_LAYER + 2 * np.array([64, 10]) * V * D
    return flops / TP / 989.5e6


def test_linear_compute_is_the_part_above_the_weight_stream():
    compute = _linear_flops_us() / 0.62  # nominal GEMM MFU
    expected = np.maximum(0, compute - WEIGHT_BYTES / 3.35e6 / 0.8)  # nominal HBM efficiency
    got = basis.linear_compute_us(X, SPEC, HW, TP)
    np.testing.assert_allclose(got, expected)
    assert got[0] == 0.0 and got[1] > 0.0  # decode is memory-bound, a 2k chunk is not


def test_roofline_knee_is_the_soft_max_excess_over_the_hard_one():
    compute, weights = _linear_flops_us() / 0.62, WEIGHT_BYTES / 3.35e6 / 0.8
    expected = np.sqrt(weights**2 + compute**2) - np.maximum(weights, compute)
    got = basis.roofline_knee_us(X, SPEC, HW, TP)
    np.testing.assert_allclose(got, expected)
    # never more than (√2 − 1)·W, largest at the knee, small far from it
    assert np.all(got <= (np.sqrt(2) - 1) * weights + 1e-9) and np.all(got > 0)
    assert got[1] < 0.5 * compute[1] - weights


def test_prefill_attention():
    # each new token attends to the mean resident context (10,000 KV tokens over 10
    # running requests) and causally to its chunk (two chunks of 1,000)
    pairs = np.array([0.0, 2000 * 10000 / 10 + 2000**2 / (2 * 2)])
    expected = 4 * 64 * 128 * L * pairs / TP / 989.5e6
    np.testing.assert_allclose(basis.prefill_attention_us(X, SPEC, HW, TP), expected)


def test_kv_read():
    expected = 2 * L * 8 * 128 * 2 / TP * np.array([40000, 10000]) / 3.35e6
    np.testing.assert_allclose(basis.kv_read_us(X, SPEC, HW, TP), expected)


def test_allreduce_bandwidth_and_none_without_tp():
    message = np.array([64, 2008]) * D * 2
    expected = 2 * L * message * 2 * 3 / 4 / 900e3
    np.testing.assert_allclose(basis.allreduce_bandwidth_us(X, SPEC, HW, TP), expected)
    np.testing.assert_allclose(basis.allreduce_bandwidth_us(X, SPEC, HW, 1), 0.0)


def test_fixed_costs():
    # Two ring all-reduces per layer, 2·(TP−1) hops of 3 µs each: 36 µs at TP4.
    np.testing.assert_allclose(basis.layer_sync_us(X, SPEC, HW, TP), L * (5 + 36))
    np.testing.assert_allclose(basis.layer_sync_us(X, SPEC, HW, 1), L * 5)
    np.testing.assert_allclose(basis.step_overhead_us(X, SPEC, HW, TP), 1000.0)
    np.testing.assert_allclose(basis.request_overhead_us(X, SPEC, HW, TP), [64 * 20, 10 * 20])
    np.testing.assert_allclose(basis.prefill_admission_us(X, SPEC, HW, TP), [0, 2 * 200])
    static = WEIGHT_BYTES / 3.35e6 / 0.8 + L * 41 + 1000
    np.testing.assert_allclose(basis.static_step_us(X, SPEC, HW, TP), static)


def test_scheduler_terms():
    np.testing.assert_allclose(basis.sched_fixed_us(X, SPEC, HW, TP), 100.0)
    np.testing.assert_allclose(basis.sched_running_us(X, SPEC, HW, TP), [128, 20])
    np.testing.assert_allclose(basis.sched_waiting_us(X, SPEC, HW, TP), [6, 0])
    np.testing.assert_allclose(basis.sched_tokens_us(X, SPEC, HW, TP), [6.4, 200.8])
    np.testing.assert_allclose(basis.sched_kv_blocks_us(X, SPEC, HW, TP), [4, 126])
    np.testing.assert_allclose(basis.sched_new_requests_us(X, SPEC, HW, TP), [0, 40])
    np.testing.assert_allclose(basis.sched_prefix_hash_us(X, SPEC, HW, TP), [0, 100])
    # 2 prefill requests with 2000 tokens: both miss the cache
    np.testing.assert_allclose(basis.sched_cache_misses_us(X, SPEC, HW, TP), [0, 40])


def test_cache_misses_count_requests_beyond_the_recomputed_last_token():
    x = basis.BatchFeatures.from_mapping(
        {"prefill_reqs": [1, 3, 3, 3, 0], "prefill_tokens": [1, 3, 4, 480, 0]}
    )
    # full hits schedule one token each; every token beyond that is at most one more miss
    expected = np.array([0, 0, 1, 3, 0]) * basis.NOMINAL_SCHED_ADMIT_US
    np.testing.assert_allclose(basis.sched_cache_misses_us(x, SPEC, HW, TP), expected)


def test_moe_active_experts():
    moe = get_model_spec("mixtral-8x7b")
    active = basis.expected_active_experts(moe, np.array([1.0, 2.0, 64.0]))
    np.testing.assert_allclose(active, [2.0, 8 * (1 - (6 / 8) ** 2), 8.0], rtol=1e-6)
    dense = basis.expected_active_experts(SPEC, np.array([1.0, 64.0]))
    np.testing.assert_allclose(dense, 1.0)
    # One decode token streams two experts' worth of FFN weights, a large batch all eight.
    one = basis.BatchFeatures.from_mapping({"decode_reqs": 1, "decode_tokens": 1})
    many = basis.BatchFeatures.from_mapping({"decode_reqs": 64, "decode_tokens": 64})
    assert (
        basis.weight_streaming_us(one, moe, HW, 2)[0]
        < basis.weight_streaming_us(many, moe, HW, 2)[0]
    )


def test_every_default_basis_is_registered_and_finite():
    for names in basis.DEFAULT_BASIS_SETS.values():
        matrix = basis.evaluate_bases(names, X, SPEC, HW, TP)
        assert matrix.shape == (2, len(names))
        assert np.all(np.isfinite(matrix)) and np.all(matrix >= 0)


def test_from_mapping_defaults_and_frame_columns():
    x = basis.BatchFeatures.from_mapping({"decode_reqs": 32, "kv_tokens": 20000})
    assert x.running_reqs[0] == 32 and x.prefill_tokens[0] == 0
    assert x.decode_tokens[0] == 32 and x.new_kv_blocks[0] == 2
    with pytest.raises(KeyError, match="feature columns"):
        import pandas as pd

        basis.BatchFeatures.from_frame(pd.DataFrame({"batch.num_decode_reqs": [1]}))


def test_host_bound_step_is_a_soft_max_of_gpu_and_scheduler_plus_launch():
    gpu = np.array([10_000.0, 10_000.0, 100.0])
    schedule = np.array([100.0, 10_000.0 - basis.NOMINAL_HOST_LAUNCH_US, 20_000.0])
    got = basis.host_bound_step_us(gpu, schedule)
    assert got[0] == pytest.approx(10_000.0, rel=1e-9)  # GPU-bound: the scheduler hides
    assert got[1] == pytest.approx(10_000.0 * 2 ** (1 / 6))  # equal: the expected max of noisy
    assert got[2] == pytest.approx(20_000.0 + basis.NOMINAL_HOST_LAUNCH_US)  # host-bound
