"""Synthetic campaign: scheduler twin invariants, trace format round trip, determinism."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.synth.campaign import run_campaign
from data_prep.synth.twin import STEP_COLUMNS, simulate
from data_prep.synth.workloads import WORKLOADS, Stage, VllmConfig, preset_experiments


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_tiny")
    run_campaign("tiny", seed=0, out_dir=out, workers=1, progress=False)
    return out


def _folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if (p / "traces.json").is_file())


def _parse_steps(path: Path) -> pd.DataFrame:
    """Independent minimal parser of the OTLP/JSON lines (step events only)."""
    rows = []
    for line in path.read_text().splitlines():
        batch = json.loads(line)
        for rs in batch["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                if ss["scope"]["name"] != "vllm.scheduler.step":
                    continue
                for span in ss["spans"]:
                    assert span["name"].startswith("scheduler_steps_")
                    for ev in span["events"]:
                        assert ev["name"] == "step.BATCH_SUMMARY"
                        row = {}
                        for a in ev["attributes"]:
                            v = a["value"]
                            if "intValue" in v:
                                assert isinstance(v["intValue"], str)
                                row[a["key"]] = int(v["intValue"])
                            else:
                                row[a["key"]] = float(v["doubleValue"])
                        rows.append(row)
    return pd.DataFrame(rows)


def test_folder_layout_and_naming(tiny):
    folders = _folders(tiny)
    assert len(folders) == len(preset_experiments("tiny"))
    for f in folders:
        assert (f / "exp-config.yaml").is_file() and (f / "ground_truth.parquet").is_file()
        parts = f.name.split("-")
        assert len(parts[0]) == 8 and parts[0].isdigit() and len(parts[1]) == 6
        assert f.name.endswith("-general") and "-tp" in f.name


def test_every_sampled_step_written_and_exact(tiny):
    for f in _folders(tiny):
        parsed = _parse_steps(f / "traces.json").sort_values("step.id").reset_index(drop=True)
        gt = pd.read_parquet(f / "ground_truth.parquet")
        truth = gt[gt["sampled"]].reset_index(drop=True)
        assert list(parsed.columns) == list(STEP_COLUMNS)
        assert len(parsed) == len(truth) > 50
        for c in STEP_COLUMNS:
            assert np.allclose(parsed[c].to_numpy(), truth[c].to_numpy()), c
        assert (
            (parsed["step.ts_end_ns"] - parsed["step.ts_start_ns"])
            .eq(parsed["step.duration_us"] * 1000)
            .all()
        )
        # sampling is ~10% and independent
        frac = gt["sampled"].mean()
        assert 0.07 < frac < 0.13


def test_request_spans_present(tiny):
    f = _folders(tiny)[0]
    names: dict[str, set] = {}
    n_core = 0
    for line in (f / "traces.json").read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    names.setdefault(ss["scope"]["name"], set()).update(
                        e["name"] for e in span["events"]
                    )
                    if span["name"] == "llm_core":
                        n_core += 1
                        assert span["attributes"][0]["key"] == "gen_ai.request.id"
    req = pd.read_parquet(f / "ground_truth_requests.parquet")
    assert n_core == len(req)
    assert {"journey.QUEUED", "journey.SCHEDULED", "journey.FIRST_TOKEN", "journey.FINISHED"} <= (
        names["vllm.scheduler"]
    )
    assert {"api.ARRIVED", "api.DEPARTED"} <= names["vllm.api"]


def test_round_trip_with_prep(tiny):
    from data_prep.dataset import prepare_steps

    result = prepare_steps([tiny])
    steps = result.steps
    for f in _folders(tiny):
        gt = pd.read_parquet(f / "ground_truth.parquet")
        mine = steps[steps["experiment_id"] == f.name].sort_values("step.id")
        truth = gt[gt["sampled"]]
        assert len(mine) == len(truth), f.name
        assert set(mine["step.id"]) == set(truth["step.id"])
        assert np.array_equal(mine["step.duration_us"].to_numpy(), truth["schedule_us"].round())
        cyc = mine.dropna(subset=["cycle_us"])
        assert len(cyc) > 0.8 * len(mine)
        true_cycle = gt["cycle_us"].to_numpy()
        for sid, gap, val in zip(
            cyc["step.id"], cyc["cycle_gap_steps"], cyc["cycle_us"], strict=True
        ):
            expect = true_cycle[int(sid) : int(sid) + int(gap)].mean()
            assert abs(val / expect - 1) < 0.01


def test_same_seed_byte_identical(tiny, tmp_path):
    run_campaign("tiny", seed=0, out_dir=tmp_path / "a", workers=1, progress=False)
    run_campaign("tiny", seed=1, out_dir=tmp_path / "b", workers=1, progress=False)
    for f in _folders(tiny):
        same = (tmp_path / "a" / f.name / "traces.json").read_bytes()
        assert same == (f / "traces.json").read_bytes()
        other = (tmp_path / "b" / f.name / "traces.json").read_bytes()
        assert other != same


def _invariants(steps: pd.DataFrame, config: VllmConfig) -> None:
    assert (steps["kv.blocks_free_gpu"] >= 0).all()
    assert (steps["kv.blocks_free_gpu"] <= steps["kv.blocks_total_gpu"]).all()
    assert (steps["batch.scheduled_tokens"] <= config.token_budget).all()
    assert (steps["queue.running_depth"] <= config.max_num_seqs).all()
    assert (
        steps["batch.scheduled_tokens"]
        == steps["batch.prefill_tokens"] + steps["batch.decode_tokens"]
    ).all()


def test_scheduler_invariants_under_overload():
    wl = replace(WORKLOADS["reasoning"], stages=(Stage(6, 40),))
    config = VllmConfig()
    res = simulate("llama-2-7b", 1, wl, config, seed=3, kv_blocks=1200)
    steps = res.steps
    _invariants(steps, config)
    assert steps["batch.num_preempted"].sum() > 0  # the small pool forces recompute
    req = res.requests
    assert (req["prompt_tokens"] + req["output_tokens"] <= config.max_model_len).all()
    done = req[req["status"] == "finished"]
    assert (done["output_tokens"] == wl.output_tokens).all()


def test_sweep_configs_respected():
    wl = replace(WORKLOADS["general"], stages=(Stage(20, 10),))
    for config in (
        VllmConfig(max_num_seqs=64),
        VllmConfig(max_num_batched_tokens=1024),
        VllmConfig(chunked_prefill=False),
    ):
        res = simulate("codellama-34b", 2, wl, config, seed=1)
        _invariants(res.steps, config)
        if not config.chunked_prefill:
            # whole prompts only: a prefill step schedules complete cache-miss remainders
            assert res.steps["batch.scheduled_tokens"].max() <= config.token_budget


def test_decode_first_and_budget():
    """Decodes are never starved: a step with prefill tokens schedules every running decode."""
    wl = replace(WORKLOADS["general"], stages=(Stage(30, 10),))
    config = VllmConfig(max_num_batched_tokens=512)
    res = simulate("llama-2-70b", 4, wl, config, seed=2)
    s = res.steps
    _invariants(s, config)
    mixed = s[s["batch.prefill_tokens"] > 0]
    assert len(mixed) > 0
    # every running request not in prefill got its decode token: decodes + prefills == running
    # whenever the budget was not exhausted by decodes
    assert (
        (mixed["batch.num_decode_reqs"] + mixed["batch.num_prefill_reqs"])
        .le(mixed["queue.running_depth"])
        .all()
    )
    full = mixed[mixed["batch.scheduled_tokens"] < config.max_num_batched_tokens]
    assert (
        (full["batch.num_decode_reqs"] + full["batch.num_prefill_reqs"])
        .eq(full["queue.running_depth"])
        .all()
    )


def test_prefix_cache_reduces_prefill():
    wl = replace(WORKLOADS["general"], stages=(Stage(10, 20),))
    on = simulate("codellama-34b", 2, wl, VllmConfig(), seed=4).steps
    off = simulate("codellama-34b", 2, wl, VllmConfig(prefix_caching=False), seed=4).steps
    n_req = 200
    # without caching every prompt is computed in full; with it, ~100 distinct prompts at most
    assert off["batch.prefill_tokens"].sum() >= n_req * wl.prompt_tokens
    assert on["batch.prefill_tokens"].sum() < 0.6 * off["batch.prefill_tokens"].sum()


@pytest.mark.slow
def test_calibration_bounds_full_preset():
    """The synthetic truth matches the real marginals (~1 min; needs ../shared/data/real)."""
    from data_prep.synth import calibration as cal

    real = cal.real_data_dir()
    if real is None:
        pytest.skip("real data (../shared/data/real) not available")
    syn = cal.synthetic_from_summaries(run_campaign("full", 0, None, workers=2, progress=False))
    table = cal.calibration_table(syn, real)
    assert table.q_ok.all() and table.cycle_ok.all() and table.token_ok.all(), cal.format_table(
        table
    )
