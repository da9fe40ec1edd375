"""Baselines against hand computations on two or three rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_prep.specs import HardwareSpec, ModelSpec
from models.baselines import Blackbox, NaiveMean, Roofline, nearest_mfu
from models.basis import BatchFeatures

SPEC = ModelSpec(
    name="toy",
    num_layers=2,
    hidden_size=4,
    num_heads=2,
    num_kv_heads=1,
    head_dim=2,
    intermediate_size=8,
    vocab_size=10,
)
HW = HardwareSpec(
    name="toy-gpu",
    bf16_dense_tflops=1e-6,  # 1 FLOP per µs
    hbm_bandwidth_tb_s=1e-6,  # 1 byte per µs
    nvlink_bandwidth_gb_s=1.0,
    hbm_capacity_gb=1.0,
)


def frame(**columns) -> pd.DataFrame:
    base = {
        "model": ["a", "a", "b"],
        "tp": [1, 1, 1],
        "batch.prefill_tokens": [0, 10, 4],
        "batch.decode_tokens": [2, 1, 3],
        "batch.num_prefill_reqs": [0, 1, 1],
        "batch.num_decode_reqs": [2, 1, 3],
        "kv_tokens": [100, 50, 20],
        "queue.running_depth": [2, 2, 4],
        "queue.waiting_depth": [0, 0, 0],
        "new_kv_blocks": [0.0, 1.0, 0.0],
        "cycle_us": [10.0, 20.0, 40.0],
        "schedule_us": [1.0, 2.0, 3.0],
    }
    base.update(columns)
    return pd.DataFrame(base)


def test_naive_mean_uses_training_rows_only():
    steps = frame()
    model = NaiveMean("cycle").fit(steps, np.array([True, True, False]))
    assert model.mean_ == pytest.approx(15.0)
    assert np.allclose(model.predict(steps), [15.0, 15.0, 15.0])
    assert np.allclose(NaiveMean("schedule").fit(steps).predict(steps, [False, True, True]), 2.0)


def test_naive_mean_skips_rows_without_target():
    steps = frame(cycle_us=[10.0, np.nan, 40.0])
    assert NaiveMean("cycle").fit(steps).mean_ == pytest.approx(25.0)


def test_blackbox_solves_the_per_model_least_squares_and_pools_unseen_models():
    # model a: y = 5 + 2·prefill + 3·decode exactly, on three rows that pin the plane.
    steps = pd.DataFrame(
        {
            "model": ["a", "a", "a", "b", "b", "b"],
            "batch.prefill_tokens": [0, 1, 0, 0, 1, 0],
            "batch.decode_tokens": [0, 0, 1, 0, 0, 1],
            "cycle_us": [5.0, 7.0, 8.0, 1.0, 1.0, 1.0],
        }
    )
    model = Blackbox("cycle").fit(steps)
    assert np.allclose(model.coef_["a"], [5.0, 2.0, 3.0])
    assert np.allclose(model.coef_["b"], [1.0, 0.0, 0.0])
    query = pd.DataFrame(
        {
            "model": ["a", "b", "new"],
            "batch.prefill_tokens": [2, 5, 0],
            "batch.decode_tokens": [1, 5, 0],
        }
    )
    # pooled over a and b: intercept 3, prefill +1, decode +1.5 (mean of the two planes)
    pooled = np.linalg.lstsq(
        np.column_stack([np.ones(6), steps["batch.prefill_tokens"], steps["batch.decode_tokens"]]),
        steps["cycle_us"],
        rcond=None,
    )[0]
    assert np.allclose(model.predict(query), [5 + 4 + 3, 1.0, pooled[0]])


def test_roofline_by_hand_with_constant_mfus():
    steps = frame().iloc[:2]
    roofline = Roofline(
        "cycle",
        specs={"a": SPEC},
        hardware=HW,
        gemm_mfu=0.5,
        attention_mfu=0.25,
        decode_attention_mfu=0.1,
        bandwidth_efficiency=0.5,
        overhead_us_per_layer=100.0,
    )
    active = SPEC.params_active_per_token
    weights = SPEC.weight_bytes_per_gpu(1, active_experts=1)
    kv_per_token = SPEC.kv_bytes_per_token(1)
    expected = []
    for prefill, decode, p_reqs, d_reqs, kv in [(0, 2, 0, 2, 100), (10, 1, 1, 1, 50)]:
        linear = 2 * (prefill + decode) * active / 0.5
        # each new token against the mean resident context (2 running) and its chunk
        pairs = prefill * (kv / 2 + prefill / (2 * max(p_reqs, 1)))
        prefill_attn = 4 * 2 * 2 * 2 * pairs / 0.25
        decode_attn = 4 * 2 * 2 * 2 * kv / 0.1 if d_reqs else 0.0
        memory = (weights + kv_per_token * kv) / 0.5
        expected.append(max(linear + prefill_attn + decode_attn, memory) + 100.0 * 2)
    assert np.allclose(roofline.predict(steps), expected)
    assert roofline.fit(steps) is roofline


def test_roofline_resolves_shipped_specs_and_scales_with_tp():
    steps = frame(model=["llama-2-70b"] * 3, tp=[4, 4, 8])
    out = Roofline("cycle").predict(steps)
    assert np.all(out > 0) and out.shape == (3,)
    assert out[2] < out[0]  # same batch on twice the GPUs is faster


def test_nearest_mfu_matches_in_log_space():
    table = pd.DataFrame({"m": [8, 1024, 8192], "mfu": [0.01, 0.4, 0.6]})
    # in log space 100 is nearer 1024 (2.33) than 8 (2.53)
    assert nearest_mfu(table, {"m": np.array([100.0, 9.0, 1e6])}).tolist() == [0.4, 0.01, 0.6]


def test_roofline_looks_up_kernel_tables(tmp_path):
    pd.DataFrame(
        {"m": [1, 4096], "k": [4, 4], "n": [8, 8], "latency_us": [1, 1], "mfu": [0.1, 0.9]}
    ).to_csv(tmp_path / "gemm_data.csv", index=False)
    pd.DataFrame(
        {
            "dtype": ["bf16"],
            "kv_dtype": ["bf16"],
            "batch_size": [1],
            "kv_len": [50],
            "latency_us": [1.0],
            "mfu": [0.05],
        }
    ).to_csv(tmp_path / "mha_decode_2-1-2-tp1.csv", index=False)
    steps = frame().iloc[[0]]
    with_tables = Roofline(
        "cycle", specs={"a": SPEC}, hardware=HW, kernel_dir=tmp_path, bandwidth_efficiency=1e9
    )
    parts = with_tables.components(BatchFeatures.from_frame(steps), SPEC, 1)
    linear = 2 * 2 * SPEC.params_active_per_token / 0.1  # m=2 is nearest m=1 → mfu 0.1
    decode = 4 * 2 * 2 * 2 * 100 / 0.05
    assert parts["compute_us"][0] == pytest.approx(linear + decode)


def test_unknown_target_is_rejected():
    with pytest.raises(ValueError):
        NaiveMean("latency").fit(frame())
