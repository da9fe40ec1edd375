"""Artifact export / validation and the numpy-only sampler against the PyMC estimator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference.export import (
    MAX_ARTIFACT_BYTES,
    ArtifactError,
    export_artifact,
    load_artifact,
    validate_artifact,
)
from inference.predictive import mape_optimal_point, predictive_draws
from inference.sampler import StepTimeSampler, probe_features, scalar_features

REPO = Path(__file__).resolve().parents[1]
BATCH = {"decode_reqs": 32, "prefill_tokens": 0, "kv_tokens": 20000}


@pytest.fixture(scope="module")
def tiny_fit(tmp_path_factory):
    """A small real fit: ~240 cycle rows of the tiny synthetic campaign, 2 × 100 draws."""
    from data_prep.dataset import prepare_steps
    from data_prep.synth.campaign import run_campaign
    from inference.estimator import StepTimeModel

    root = tmp_path_factory.mktemp("tiny")
    run_campaign("tiny", 0, root / "campaign", workers=1, progress=False)
    steps = prepare_steps([root / "campaign"]).steps
    rows = steps["cycle_us"].notna().to_numpy()
    rng = np.random.default_rng(0)
    keep = np.zeros(len(steps), dtype=bool)
    candidates = np.flatnonzero(rows)
    keep[rng.choice(candidates, size=min(240, candidates.size), replace=False)] = True
    model = StepTimeModel(target="cycle")
    model.fit(steps, keep, draws=100, tune=100, chains=2, seed=1, progressbar=False)
    folder = model.save(root / "fit")
    artifact = export_artifact(folder, root / "steptime.json", n_draws=400, seed=0)
    return {"steps": steps, "rows": keep, "model": model, "fit": folder, "artifact": artifact}


@pytest.fixture(scope="module")
def sampler(tiny_fit):
    return StepTimeSampler.load(tiny_fit["artifact"])


def test_import_sampler_does_not_import_pymc():
    code = (
        "import sys, inference.sampler, inference.export; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pymc', 'pytensor', 'arviz', 'xarray', 'pandas')); print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_artifact_is_small_versioned_and_complete(tiny_fit):
    path = tiny_fit["artifact"]
    assert path.stat().st_size <= MAX_ARTIFACT_BYTES
    artifact = load_artifact(path)
    assert artifact["format"] == "steptime-artifact" and artifact["version"] == 1
    assert artifact["basis_names"] == list(tiny_fit["model"].basis_names)
    assert artifact["basis_constants"]["NOMINAL_STEP_OVERHEAD_US"] > 0
    assert set(artifact["groups"]["models"]) == {"llama-2-70b", "codellama-34b"}
    # 200 draws in the fit, fewer than the 400 asked for: all kept
    assert artifact["draws"]["n_draws"] == 200
    assert np.shape(artifact["draws"]["log_beta"]) == (200, 2, len(artifact["basis_names"]))


def test_schema_file_is_valid_json_schema_subset():
    schema = json.loads((REPO / "inference" / "steptime_artifact.schema.json").read_text())
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "draws" in schema["required"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.pop("hardware"), "missing required key 'hardware'"),
        (lambda a: a["draws"].pop("nu"), "$.draws: missing required key 'nu'"),
        (lambda a: a.update(version=99), "unsupported artifact version 99"),
        (lambda a: a["draws"]["nu"].pop(), "$.draws.nu: shape"),
        (lambda a: a["groups"].update(models="x"), "$.groups.models: expected array"),
        (lambda a: a["draws"]["sigma_step"][0].__setitem__(0, -1.0), "must be ≥ 0"),
    ],
)
def test_validation_names_what_is_wrong(tiny_fit, tmp_path, mutate, message):
    artifact = json.loads(tiny_fit["artifact"].read_text())
    validate_artifact(artifact)
    mutate(artifact)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(artifact))
    with pytest.raises(ArtifactError) as err:
        load_artifact(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_predict_frame_equals_estimator_predict(tiny_fit, sampler):
    steps, rows = tiny_fit["steps"], tiny_fit["rows"]
    expected = tiny_fit["model"].predict(steps, rows, n_draws=1000, seed=3)
    got = sampler.predict_frame(steps, rows, n_draws=1000, seed=3)
    # same draws (rounded to 6 significant digits), same seed, same predictive function;
    # the rounding of σ is amplified in the far Student-t tails, so tails are looser
    for column in ("q0.25", "q0.5", "q0.75"):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-4)
    for column in ("point_us", "q0.05", "q0.95"):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-2)
    assert list(got.columns) == list(expected.columns)


def test_single_step_predict_matches_predictive(sampler):
    ctx = sampler.context("llama-2-70b", 4, "general")
    bases = ctx.bases(probe_features(8))
    rng = np.random.default_rng(0)
    reference = predictive_draws(
        sampler.draws.thin(10_000, rng),
        np.repeat(bases, 50, axis=0),
        np.full(400, "llama-2-70b"),
        np.full(400, "dense"),
        np.full(400, "general"),
        np.ones(400),
        rng,
    ).reshape(sampler.draws.n_draws, 8, 50)
    reference = np.moveaxis(reference, 2, 1).reshape(-1, 8)
    for i in range(8):
        x = {name: float(getattr(probe_features(8), name)[i]) for name in _feature_names()}
        got = sampler.predict(x, model="llama-2-70b", tp=4, workload="general")
        median = np.median(reference[:, i])
        assert got["median_us"] == pytest.approx(median, rel=0.01)
        assert got["q0.05"] == pytest.approx(np.quantile(reference[:, i], 0.05), rel=0.05)
        assert got["point_us"] == pytest.approx(
            float(mape_optimal_point(np.clip(reference[:, i], median / 3, None))), rel=0.02
        )


def _feature_names():
    from dataclasses import fields

    from models.basis import BatchFeatures

    return [f.name for f in fields(BatchFeatures)]


def test_fast_bases_equal_numpy_bases(sampler):
    for model, tp in (
        ("llama-2-70b", 4),
        ("codellama-34b", 2),
        ("mixtral-8x7b", 2),
        ("llama-2-7b", 1),
    ):
        ctx = sampler.context(model, tp, "general")
        assert ctx.fast_bases is not None
        x = probe_features(64, seed=7)
        reference = ctx.bases(x)
        for i in range(64):
            step = {name: float(getattr(x, name)[i]) for name in _feature_names()}
            np.testing.assert_allclose(
                ctx.step_bases(scalar_features(step)), reference[i], rtol=1e-12, atol=1e-9
            )


def test_batch_of_arrays_equals_steps_one_by_one(sampler):
    x = probe_features(16, seed=3)
    arrays = {name: getattr(x, name) for name in _feature_names()}
    many = sampler.predict(arrays, model="codellama-34b", tp=2, workload="general")
    for i in range(16):
        one = sampler.predict(
            {k: float(v[i]) for k, v in arrays.items()},
            model="codellama-34b",
            tp=2,
            workload="general",
        )
        for key in one:
            assert one[key] == pytest.approx(float(many[key][i]), rel=1e-9)


def test_fast_point_close_to_exact_point(sampler):
    x = probe_features(200, seed=11)
    arrays = {name: getattr(x, name) for name in _feature_names()}
    exact = sampler.predict(arrays, model="llama-2-70b", tp=4, workload="general")["point_us"]
    fast = sampler.point(arrays, model="llama-2-70b", tp=4, workload="general")
    assert np.median(np.abs(fast / exact - 1)) < 0.005


def test_unseen_model_has_wider_band_than_seen(sampler):
    config = REPO / "data_prep" / "specs_data" / "models" / "llama-2-70b.json"
    seen = sampler.predict(BATCH, model="llama-2-70b", tp=4, workload="general")
    unseen = sampler.predict(BATCH, model_config=config, tp=4, workload="general", as_unseen=True)
    assert not sampler.context(
        model_config=config, tp=4, workload="general", as_unseen=True
    ).seen_model
    width = lambda r: r["q0.95"] / r["q0.05"]  # noqa: E731
    assert width(unseen) > 1.05 * width(seen)
    # a never-fitted model from its config alone
    mixtral = sampler.predict(BATCH, model="mixtral-8x7b", tp=2)
    assert sampler.context("mixtral-8x7b", 2).architecture == "moe"
    assert 0 < mixtral["q0.05"] < mixtral["median_us"] < mixtral["q0.95"]


def test_parameter_uncertainty_and_step_noise_are_separate_knobs(sampler):
    rng = np.random.default_rng(0)
    kwargs = {"model": "llama-2-70b", "tp": 4, "workload": "general"}
    both = sampler.sample(BATCH, 2000, rng, **kwargs)
    params_only = sampler.sample(BATCH, 2000, rng, step_noise=False, **kwargs)
    noise_only = sampler.sample(BATCH, 2000, rng, parameter_uncertainty=False, **kwargs)
    neither = sampler.sample(
        BATCH, 50, rng, parameter_uncertainty=False, step_noise=False, **kwargs
    )
    assert np.ptp(neither) == 0
    assert np.std(np.log(params_only)) > 0
    assert np.std(np.log(both)) > np.std(np.log(params_only))
    # runs: without parameter uncertainty every run has the same noise-free step time
    runs = [
        sampler.run_draw(
            np.random.default_rng(s), parameter_uncertainty=False, step_noise=False, **kwargs
        )(BATCH)
        for s in range(5)
    ]
    assert np.ptp(runs) == 0
    runs = [
        sampler.run_draw(np.random.default_rng(s), step_noise=False, **kwargs)(BATCH)
        for s in range(5)
    ]
    assert np.ptp(runs) > 0
    assert noise_only.shape == (2000,)
    many = sampler.sample({"decode_reqs": [1, 64], "kv_tokens": [100, 90000]}, 10, rng, **kwargs)
    assert many.shape == (10, 2) and np.all(many[:, 1] > many[:, 0] * 0.9)


def test_run_noise_preserves_the_mean(sampler):
    kwargs = {"model": "llama-2-70b", "tp": 4, "workload": "general"}
    run = sampler.run_draw(np.random.default_rng(1), **kwargs)
    quiet = sampler.run_draw(np.random.default_rng(1), step_noise=False, **kwargs)
    times = np.array([run(BATCH) for _ in range(20_000)])
    assert np.std(times) > 0
    assert np.mean(times) == pytest.approx(quiet(BATCH), rel=0.01)


def test_predict_cli_json(tiny_fit):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "steptime.cli",
            "predict",
            "--artifact",
            str(tiny_fit["artifact"]),
            "--model",
            "llama-2-70b",
            "--tp",
            "4",
            "--batch",
            "decode_reqs=32,prefill_tokens=0,kv_tokens=20000",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert set(result) == {"median_us", "mean_us", "p05_us", "p95_us", "point_us"}
    assert result["p05_us"] < result["median_us"] < result["p95_us"]


def test_predict_cli_rejects_bad_batch(tiny_fit):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "steptime.cli",
            "predict",
            "--artifact",
            str(tiny_fit["artifact"]),
            "--model",
            "llama-2-70b",
            "--batch",
            "decode=32",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "bad batch item 'decode=32'" in out.stderr
