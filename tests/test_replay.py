"""Replay through the scheduler twin with sampled step times (no fit needed: a prior artifact)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.specs import get_model_spec, load_hardware
from inference.export import ARTIFACT_FORMAT, ARTIFACT_VERSION, basis_constants, validate_artifact
from inference.replay import format_replay, latency_stats, real_client_medians, replay
from inference.sampler import StepTimeSampler
from models.basis import BASIS_SET_VERSION, DEFAULT_BASIS_SETS
from models.priors import DEFAULT_PRIORS

REPO = Path(__file__).resolve().parents[1]
MODELS = ("codellama-34b", "llama-2-70b")


def prior_artifact(n_draws: int = 50, seed: int = 0) -> dict:
    """An artifact whose draws come from the prior (for mechanics, not accuracy)."""
    rng = np.random.default_rng(seed)
    names = DEFAULT_BASIS_SETS["cycle"]
    config = DEFAULT_PRIORS["cycle"] if isinstance(DEFAULT_PRIORS, dict) else DEFAULT_PRIORS
    priors = config.for_bases(names)
    median = np.log([p.median for p in priors])
    log_sd = np.array([p.log_sd for p in priors])
    model_sd = np.array([p.model_sd for p in priors])
    population = median + 0.1 * log_sd * rng.standard_normal((n_draws, len(names)))
    log_beta = population[:, None, :] + model_sd * rng.standard_normal(
        (n_draws, len(MODELS), len(names))
    )
    artifact = {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "target": "cycle",
        "basis_set_version": BASIS_SET_VERSION,
        "basis_names": list(names),
        "basis_constants": basis_constants(),
        "hardware": load_hardware().to_dict(),
        "model_specs": {m: get_model_spec(m).to_dict() for m in MODELS},
        "priors": {
            "model_sd": model_sd.tolist(),
            "moe_sd": [p.moe_sd for p in priors],
            "workload_sd": 0.05,
        },
        "groups": {
            "models": list(MODELS),
            "model_architectures": ["dense", "dense"],
            "workloads": ["general"],
        },
        "draws": {
            "n_draws": n_draws,
            "log_beta_population": population.tolist(),
            "a_moe": rng.standard_normal((n_draws, len(names))).tolist(),
            "log_beta": log_beta.tolist(),
            "workload_effect": (0.02 * rng.standard_normal((n_draws, 1))).tolist(),
            "sigma_floor": np.full((n_draws, 2), 0.02).tolist(),
            "sigma_step": np.full((n_draws, 2), 0.05).tolist(),
            "nu": np.full(n_draws, 5.0).tolist(),
        },
    }
    return validate_artifact(artifact)


@pytest.fixture(scope="module")
def sampler():
    return StepTimeSampler(prior_artifact())


def test_replay_runs_and_compares_with_truth(sampler):
    result = replay(sampler, "llama-2-70b", 4, "general", seed=1, time_scale=1 / 200)
    assert result.n_requests["truth"] > 20 and result.n_requests["replay"] > 20
    for side in (result.truth, result.replay):
        assert set(side) == {"ttft_ms", "itl_ms", "e2e_ms"}
        assert side["e2e_ms"]["p90"] >= side["e2e_ms"]["p50"] > side["ttft_ms"]["p50"] > 0
    # the prior's step times are physical: within a factor 2 of the twin's truth
    assert 0.5 < result.ratio("e2e_ms", "mean") < 2.0
    assert len(result.draws) == 1 and 0 <= result.draws[0] < 50
    record = result.to_dict()
    assert record["ratio"]["e2e_ms"]["mean"] == pytest.approx(result.ratio())


def test_replay_without_uncertainty_is_deterministic(sampler):
    kwargs = {"seed": 2, "time_scale": 1 / 200, "parameter_uncertainty": False, "step_noise": False}
    first = replay(sampler, "codellama-34b", 2, "general", **kwargs)
    second = replay(sampler, "codellama-34b", 2, "general", **kwargs)
    assert first.draws == [-1]
    assert first.replay == second.replay
    noisy = replay(sampler, "codellama-34b", 2, "general", seed=2, time_scale=1 / 200)
    assert noisy.replay != first.replay
    assert noisy.truth == first.truth  # same seed: same arrivals and oracle


def test_replay_pools_several_seeded_runs(sampler):
    kwargs = {"time_scale": 1 / 200}
    pooled = replay(sampler, "llama-2-70b", 4, "general", seed=3, runs=2, **kwargs)
    single = [replay(sampler, "llama-2-70b", 4, "general", seed=s, **kwargs) for s in (3, 4)]
    assert pooled.draws == [r.draws[0] for r in single]
    for side in ("truth", "replay"):
        assert pooled.n_requests[side] == sum(r.n_requests[side] for r in single)
    means = [r.truth["e2e_ms"]["mean"] for r in single]
    assert min(means) <= pooled.truth["e2e_ms"]["mean"] <= max(means)
    assert "2 runs pooled" in format_replay(pooled)


def test_replay_refuses_unknown_workload(sampler):
    with pytest.raises(KeyError, match="unknown workload"):
        replay(sampler, "llama-2-70b", 4, "chat")


def test_real_client_medians(tmp_path):
    table = tmp_path / "experiments.csv"
    table.write_text(
        "experiment_id,model,workload,client_tpot_median_ms,client_ttft_median_ms,"
        "client_e2e_median_ms\n"
        "x,llama-2-70b,general,10.8,63.9,5452\n"
        "y,llama-2-70b,codegen,9.0,50.0,3000\n"
    )
    got = real_client_medians("meta-llama/Llama-2-70b-hf", "general", table)
    assert got == {"ttft_ms": 63.9, "itl_ms": 10.8, "e2e_ms": 5452.0}
    assert real_client_medians("mixtral-8x7b", "general", table) == {}
    assert real_client_medians("llama-2-70b", "general", tmp_path / "absent.csv") == {}


def test_latency_stats_ignore_unfinished():
    import pandas as pd

    requests = pd.DataFrame(
        {
            "status": ["finished", "finished", "aborted"],
            "ttft_ms": [1.0, 3.0, 100.0],
            "itl_ms": [2.0, 2.0, np.nan],
            "e2e_ms": [10.0, 30.0, np.nan],
        }
    )
    stats = latency_stats(requests)
    assert stats["ttft_ms"]["mean"] == 2.0 and stats["e2e_ms"]["p50"] == 20.0


def test_replay_cli_json(tmp_path):
    path = tmp_path / "steptime.json"
    path.write_text(json.dumps(prior_artifact()))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "steptime.cli",
            "replay",
            "--artifact",
            str(path),
            "--workload",
            "general",
            "--model",
            "llama-2-70b",
            "--time-scale",
            "0.005",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    (record,) = json.loads(out.stdout)
    assert record["model"] == "llama-2-70b" and record["tp"] == 4
    assert record["ratio"]["e2e_ms"]["mean"] > 0
