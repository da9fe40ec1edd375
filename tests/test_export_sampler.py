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
from inference.predictive import RegimeDraws, mape_optimal_point, predictive_draws
from inference.sampler import StepTimeSampler, probe_features, scalar_features

REPO = Path(__file__).resolve().parents[1]
BATCH = {"decode_reqs": 32, "prefill_tokens": 0, "kv_tokens": 20000}


@pytest.fixture(scope="module")
def tiny_fit(tmp_path_factory, tiny_steps):
    """A small real fit: ~240 cycle rows of the tiny synthetic campaign, 2 × 100 draws."""
    from inference.estimator import StepTimeModel

    root = tmp_path_factory.mktemp("tiny")
    steps = tiny_steps
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
    assert artifact["format"] == "steptime-artifact" and artifact["version"] == 4
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
    # medians: a draw may be a stalled step, several times longer
    assert many.shape == (10, 2) and np.median(many[:, 1]) > np.median(many[:, 0])


def test_run_noise_preserves_the_mean(sampler):
    kwargs = {"model": "llama-2-70b", "tp": 4, "workload": "general"}
    run = sampler.run_draw(np.random.default_rng(1), **kwargs)
    quiet = sampler.run_draw(np.random.default_rng(1), step_noise=False, **kwargs)
    times = np.array([run(BATCH) for _ in range(20_000)])
    assert np.std(times) > 0
    assert np.mean(times) == pytest.approx(quiet(BATCH), rel=0.01)


def test_stalls_are_drawn_at_their_rate_and_priced_into_the_mean(sampler):
    kwargs = {"model": "llama-2-70b", "tp": 4, "workload": "general"}
    ctx = sampler.context(**kwargs)
    assert ctx.stall is not None  # a cycle fit carries the stall component
    rate = float(ctx.stall_central.rate[0])
    jump = float(np.exp(ctx.stall_central.log_jump[0]))
    base = float(ctx.step_bases(scalar_features(BATCH)) @ ctx.beta_central)
    quiet = sampler.run_draw(
        np.random.default_rng(0), parameter_uncertainty=False, step_noise=False, **kwargs
    )
    expected_jump = np.exp(np.log(jump) + 0.5 * float(ctx.stall_central.spread[0]) ** 2)
    assert quiet(BATCH) == pytest.approx(base * (1 + rate * (expected_jump - 1)), rel=1e-9)
    run = sampler.run_draw(np.random.default_rng(0), parameter_uncertainty=False, **kwargs)
    times = np.array([run(BATCH) for _ in range(60_000)])
    stalled = np.mean(times > base * np.sqrt(jump))
    assert 0.6 * rate < stalled < 1.4 * rate + 0.001


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


# --- the scheduler's slow regime (schedule target) ---------------------------------------

SCHED = {"model": "llama-2-70b", "tp": 4, "workload": "general"}


@pytest.fixture(scope="module")
def schedule_fit(tmp_path_factory, tiny_steps):
    """A small schedule-target fit (two-regime mixture): ≤ 150 rows per model, 2 × 100 draws."""
    from inference.estimator import StepTimeModel

    root = tmp_path_factory.mktemp("schedule")
    steps = tiny_steps
    has_target = steps["step.duration_us"].notna().to_numpy()
    rng = np.random.default_rng(0)
    keep = np.zeros(len(steps), dtype=bool)
    for name in steps["model"].unique():
        candidates = np.flatnonzero(has_target & (steps["model"] == name).to_numpy())
        keep[rng.choice(candidates, size=min(150, candidates.size), replace=False)] = True
    model = StepTimeModel(target="schedule")
    assert model.priors.regime is not None
    model.fit(steps, keep, draws=100, tune=100, chains=2, seed=1, progressbar=False)
    folder = model.save(root / "fit")
    # all 200 draws, so the sampler's predict_frame thins exactly as the estimator does
    artifact = export_artifact(folder, root / "steptime.json", n_draws=400, seed=0)
    return {"steps": steps, "rows": keep, "model": model, "fit": folder, "artifact": artifact}


@pytest.fixture(scope="module")
def schedule_sampler(schedule_fit):
    return StepTimeSampler.load(schedule_fit["artifact"])


def _without_regime(sampler: StepTimeSampler) -> StepTimeSampler:
    artifact = {k: v for k, v in sampler.artifact.items() if k != "regime"}
    return StepTimeSampler(artifact)


def _with_regime(sampler: StepTimeSampler, **values) -> StepTimeSampler:
    """The sampler's artifact with a hand-built regime: every draw and model the same."""
    artifact = json.loads(json.dumps(sampler.artifact))
    d = artifact["draws"]["n_draws"]
    m = len(artifact["groups"]["models"])
    regime = artifact["regime"]
    for name, value in values.items():
        if name in RegimeDraws.PER_MODEL:
            regime[name] = np.full((d, m), value).tolist()
        elif name in RegimeDraws.PER_DRAW:
            regime[name] = np.full(d, value).tolist()
        else:
            regime[name] = value
    return StepTimeSampler(artifact)


def test_schedule_artifact_carries_the_regime(schedule_fit, schedule_sampler):
    from inference.export import build_artifact, posterior_draws

    assert "regime" in load_artifact(schedule_fit["artifact"])
    artifact = validate_artifact(build_artifact(schedule_fit["fit"], n_draws=150, seed=0))
    regime = artifact["regime"]
    d, m = artifact["draws"]["n_draws"], len(artifact["groups"]["models"])
    assert d == 150
    for name in RegimeDraws.PER_DRAW:
        assert np.shape(regime[name]) == ((d, m) if name in RegimeDraws.PER_MODEL else (d,))
    prior = schedule_fit["model"].priors.regime
    for name in RegimeDraws.HYPERPARAMETERS:
        assert regime[name] == getattr(prior, name)
    # thinned with the same draw indices as the rest of the draws
    full = schedule_fit["model"].posterior_draws()
    thinned = full.thin(150, np.random.default_rng(0))
    draws = posterior_draws(artifact)
    np.testing.assert_allclose(draws.nu, thinned.nu, rtol=1e-5)
    np.testing.assert_allclose(draws.regime.threshold, thinned.regime.threshold, rtol=1e-5)
    np.testing.assert_allclose(draws.regime.jump, thinned.regime.jump, rtol=1e-5)
    np.testing.assert_allclose(draws.regime.p_max, thinned.regime.p_max, rtol=1e-5)
    np.testing.assert_allclose(draws.regime.growth, thinned.regime.growth, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(draws.regime.width, thinned.regime.width, rtol=1e-5)
    assert schedule_sampler.context(**SCHED).regime is not None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("threshold"), "$.regime: missing required key 'threshold'"),
        (lambda r: r["jump"][0].pop(), "$.regime.jump: shape"),
        (lambda r: r["p_max"].pop(), "$.regime.p_max: shape"),
        (lambda r: r["p_max"][0].__setitem__(0, 1.5), "must be ≤ 1"),
        (lambda r: r["growth"].pop(), "$.regime.growth: shape"),
        (lambda r: r["width"].__setitem__(0, 0.0), "$.regime.width[0]: must be > 0"),
    ],
)
def test_regime_validation_names_what_is_wrong(schedule_fit, mutate, message):
    artifact = json.loads(schedule_fit["artifact"].read_text())
    mutate(artifact["regime"])
    with pytest.raises(ArtifactError) as err:
        validate_artifact(artifact)
    assert message in str(err.value)


def test_regime_of_an_older_artifact_version_is_refused(schedule_fit):
    artifact = json.loads(schedule_fit["artifact"].read_text())
    artifact["version"] = 3
    with pytest.raises(ArtifactError, match="re-fit and re-export"):
        validate_artifact(artifact)
    del artifact["regime"]  # a version-3 artifact without a regime still reads
    assert validate_artifact(artifact)["version"] == 3


def test_schedule_predict_frame_equals_estimator_predict(schedule_fit, schedule_sampler):
    steps, rows = schedule_fit["steps"], schedule_fit["rows"]
    expected = schedule_fit["model"].predict(steps, rows, n_draws=1000, seed=3)
    got = schedule_sampler.predict_frame(steps, rows, n_draws=1000, seed=3)
    assert list(got.columns) == list(expected.columns)
    # rounding of the draws can flip a rare slow/fast pick: compare medians over rows
    for column in ("point_us", "q0.05", "q0.25", "q0.5", "q0.75", "q0.95"):
        ratio = got[column].to_numpy() / expected[column].to_numpy()
        assert np.median(np.abs(ratio - 1)) < 1e-4, column
        assert np.quantile(np.abs(ratio - 1), 0.95) < 1e-2, column
    # and the regime matters: without it the slow rows come out far too fast
    plain = _without_regime(schedule_sampler).predict_frame(steps, rows, n_draws=1000, seed=3)
    running = steps.loc[rows, "queue.running_depth"].to_numpy()
    busy = running > 110
    assert busy.sum() >= 5
    assert np.median(expected["q0.5"].to_numpy()[busy] / plain["q0.5"].to_numpy()[busy]) > 3


def test_fitted_regime_slows_busy_steps(schedule_sampler):
    plain = _without_regime(schedule_sampler)
    rng = np.random.default_rng(0)
    medians = {}
    for name, sampler in (("regime", schedule_sampler), ("plain", plain)):
        for running in (10, 200):
            batch = {"decode_reqs": 8, "running_reqs": running}
            medians[name, running] = np.median(sampler.sample(batch, 4000, rng, **SCHED))
    # quiet queue: the regime changes nothing (P(slow) ≈ 0 far below the threshold)
    assert medians["regime", 10] == pytest.approx(medians["plain", 10], rel=0.05)
    # busy queue: steps are slower by about the fitted slow/fast ratio there
    regime = schedule_sampler.context(**SCHED).regime
    log_ratio = np.median(regime.draws.log_jump(np.array([200.0])))
    assert log_ratio > np.log(3)
    slowdown = medians["regime", 200] / medians["plain", 200]
    assert slowdown == pytest.approx(np.exp(log_ratio), rel=0.5)


def test_every_path_switches_regime_at_the_threshold(schedule_sampler):
    """Hand-built regime: threshold 60, jump ×10, no growth, tiny slow noise, p_max 1,
    width 4."""
    sampler = _with_regime(
        schedule_sampler,
        threshold=60.0,
        jump=np.log(10.0),
        growth=0.0,
        slow_sigma=1e-3,
        p_max=1.0,
        width=4.0,
    )
    plain = _without_regime(schedule_sampler)
    kwargs = dict(SCHED)
    for running, factor in ((20, 1.0), (100, 10.0)):
        batch = {"decode_reqs": 8, "running_reqs": running}
        fast = plain.predict(batch, **kwargs)["median_us"]
        assert sampler.predict(batch, **kwargs)["median_us"] == pytest.approx(
            factor * fast, rel=0.1
        )
        assert sampler.point(batch, **kwargs) == pytest.approx(
            sampler.predict(batch, **kwargs)["point_us"], rel=1e-12
        )
        rng = np.random.default_rng(running)
        assert np.median(sampler.sample(batch, 4000, rng, **kwargs)) == pytest.approx(
            factor * fast, rel=0.1
        )
        # runs (central draw): fast steps have the plain run's noise; slow ones (σ ≈ 0)
        # are exp(jump) times the noise-free time, the slow pool being mean-normalised
        seed = np.random.default_rng(running)
        run = sampler.run_draw(seed, parameter_uncertainty=False, **kwargs)
        times = np.median([run.step_time_fn(batch) for _ in range(4000)])
        if factor == 1.0:
            plain_run = plain.run_draw(seed, parameter_uncertainty=False, **kwargs)
            expected = np.median([plain_run(batch) for _ in range(4000)])
        else:
            quiet = plain.run_draw(seed, parameter_uncertainty=False, step_noise=False, **kwargs)
            expected = factor * quiet(batch)
        assert times == pytest.approx(expected, rel=0.05)
    # at the threshold half the steps are slow, in every path
    batch = {"decode_reqs": 8, "running_reqs": 60}
    fast = plain.predict(batch, **kwargs)["median_us"]
    rng = np.random.default_rng(1)
    slow_share = np.mean(sampler.sample(batch, 4000, rng, **kwargs) > 3 * fast)
    assert slow_share == pytest.approx(0.5, abs=0.05)
    # runs: the same seed picks the same posterior draw with and without the regime
    fast = plain.run_draw(np.random.default_rng(2), step_noise=False, **kwargs)(batch)
    run = sampler.run_draw(np.random.default_rng(2), **kwargs)
    assert run.p_slow(60) == pytest.approx(0.5)
    times = np.array([run(batch) for _ in range(4000)])
    assert np.mean(times > 3 * fast) == pytest.approx(0.5, abs=0.05)
    # mean-preserving simulation noise includes the regime: E = fast · (1 + 0.5 · 9)
    quiet = sampler.run_draw(np.random.default_rng(2), step_noise=False, **kwargs)(batch)
    assert quiet == pytest.approx(5.5 * fast, rel=1e-9)
    times = np.array([run(batch) for _ in range(20_000)])
    assert np.mean(times) == pytest.approx(quiet, rel=0.03)
    # the batch path equals the single-step hot path
    x = probe_features(16, seed=5)
    arrays = {name: getattr(x, name) for name in _feature_names()}
    arrays["running_reqs"] = np.linspace(0, 120, 16)
    many = sampler.predict(arrays, **kwargs)
    for i in range(16):
        one = sampler.predict({k: float(v[i]) for k, v in arrays.items()}, **kwargs)
        for key in one:
            assert one[key] == pytest.approx(float(many[key][i]), rel=1e-9)
    np.testing.assert_allclose(sampler.point(arrays, **kwargs), many["point_us"], rtol=1e-12)


def test_every_path_grows_the_slow_regime_with_the_queue(schedule_sampler):
    """growth 1: a slow step at twice the threshold is 2 × 10 times the fast one."""
    regime = dict(threshold=60.0, jump=np.log(10.0), slow_sigma=1e-3, p_max=1.0, width=1.0)
    sampler = _with_regime(schedule_sampler, growth=1.0, **regime)
    flat = _with_regime(schedule_sampler, growth=0.0, **regime)
    plain = _without_regime(schedule_sampler)
    batch = {"decode_reqs": 8, "running_reqs": 120}
    fast = plain.predict(batch, **SCHED)["median_us"]
    assert sampler.predict(batch, **SCHED)["median_us"] == pytest.approx(20 * fast, rel=0.1)
    assert flat.predict(batch, **SCHED)["median_us"] == pytest.approx(10 * fast, rel=0.1)
    arrays = {"decode_reqs": np.array([8.0, 8.0]), "running_reqs": np.array([120.0, 240.0])}
    medians = sampler.predict(arrays, **SCHED)["median_us"]
    fast_medians = plain.predict(arrays, **SCHED)["median_us"]  # the queue costs fast steps too
    assert medians[1] / medians[0] == pytest.approx(
        2.0 * fast_medians[1] / fast_medians[0], rel=0.1
    )
    samples = sampler.sample(batch, 4000, np.random.default_rng(0), **SCHED)
    assert np.median(samples) == pytest.approx(20 * fast, rel=0.1)
    quiet = plain.run_draw(np.random.default_rng(1), step_noise=False, **SCHED)(batch)
    run = sampler.run_draw(np.random.default_rng(1), **SCHED)
    assert run.log_jump(120) == pytest.approx(np.log(20.0))
    assert np.median([run(batch) for _ in range(2000)]) == pytest.approx(20 * quiet, rel=0.05)
    still = sampler.run_draw(np.random.default_rng(1), step_noise=False, **SCHED)(batch)
    assert still == pytest.approx(20 * quiet, rel=1e-9)


def test_unseen_model_draws_the_regime_through_the_hyperprior(schedule_sampler):
    sampler = _with_regime(
        schedule_sampler,
        threshold=60.0,
        threshold_population=60.0,
        threshold_model_sd=16.0,
        growth_population=0.5,
        growth_model_sd=1.0,
        p_max_population=0.9,
        p_max_model_sd=0.5,
    )
    seen = sampler.context(**SCHED).regime
    unseen = sampler.context(**SCHED, as_unseen=True).regime
    assert np.ptp(seen.draws.threshold) == 0
    assert np.std(unseen.draws.threshold) == pytest.approx(16.0, rel=0.3)
    assert np.mean(unseen.draws.threshold) == pytest.approx(60.0, abs=6.0)
    assert np.std(unseen.draws.growth) == pytest.approx(1.0, rel=0.3)
    assert np.mean(unseen.draws.growth) == pytest.approx(0.5, abs=0.4)
    logit = np.log(unseen.draws.p_max / (1.0 - unseen.draws.p_max))
    assert np.std(logit) == pytest.approx(0.5, rel=0.3)
    assert np.mean(logit) == pytest.approx(np.log(9.0), abs=0.2)
