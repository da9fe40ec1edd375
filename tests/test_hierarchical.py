"""The PyMC model: its likelihood equals a hand computation, and its priors are plausible."""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from scipy import stats

from inference.estimator import StepTimeModel
from models.hierarchical import GroupCoords, build_model, per_model_matvec


def test_per_model_matvec_equals_gathered_rows():
    rng = np.random.default_rng(0)
    bases = rng.random((50, 3))
    model_idx = rng.integers(0, 3, 50)
    beta = rng.random((3, 3))
    got = per_model_matvec(pt.as_tensor(beta), bases, model_idx, 3).eval()
    np.testing.assert_allclose(got, np.sum(beta[model_idx] * bases, axis=1))


@pytest.fixture(scope="module")
def cycle_design(tiny_steps):
    model = StepTimeModel(target="cycle")
    rows = tiny_steps["cycle_us"].notna().to_numpy()
    design = model.design(tiny_steps, rows=rows)
    return model, design, GroupCoords.from_design(design)


def test_log_likelihood_matches_student_t_by_hand(cycle_design):
    estimator, design, coords = cycle_design
    pm_model = build_model(design, estimator.priors, coords)
    point = pm_model.initial_point()
    point = {k: v + 0.1 for k, v in point.items()}  # away from zeros
    logp = pm_model.compile_logp(vars=[pm_model["log_y"]], sum=True)(point)

    # The model's structure, written out: non-centred population → model coefficients.
    priors = estimator.priors.for_bases(design.basis_names)
    median = np.log([p.median for p in priors])
    log_sd = np.array([p.log_sd for p in priors])
    model_sd = np.array([p.model_sd for p in priors])
    log_beta = median + log_sd * point["u_population"] + model_sd * point["z_model"]
    workload_effect = estimator.priors.noise.workload_sd * point["v_workload"]
    nu = 2.0 + np.exp(point["nu_excess_log__"])
    floor = np.exp(point["sigma_floor_log__"])
    step = np.exp(point["sigma_step_log__"])
    model_idx, workload_idx = coords.indices(design)
    mean = np.sum(np.exp(log_beta)[model_idx] * design.bases, axis=1)
    mu = np.log(mean) + workload_effect[workload_idx]
    sigma = np.sqrt(floor[model_idx] ** 2 + step[model_idx] ** 2 / design.gap_steps)
    expected = stats.t.logpdf(np.log(design.y), df=nu, loc=mu, scale=sigma).sum()
    assert logp == pytest.approx(expected, rel=1e-9)


def test_prior_predictive_is_physically_plausible(cycle_design):
    """Priors from physics put the observed step times well inside the prior predictive."""
    estimator, design, coords = cycle_design
    with build_model(design, estimator.priors, coords):
        prior = pm.sample_prior_predictive(draws=300, random_seed=1)
    simulated = np.exp(prior.prior_predictive["log_y"].values.reshape(300, -1))
    for model in coords.models:
        rows = design.model == model
        observed = np.median(design.y[rows])
        medians = np.median(simulated[:, rows], axis=1)
        low, mid, high = np.quantile(medians, [0.05, 0.5, 0.95])
        assert low < observed < high, (model, low, observed, high)
        assert 0.5 < mid / observed < 2.0, (model, mid, observed)
        assert high / low < 10.0  # informative, not vague


def test_single_step_target_has_no_separate_noise_floor(tiny_steps):
    estimator = StepTimeModel(target="schedule")
    design = estimator.design(tiny_steps)
    pm_model = build_model(design, estimator.priors, GroupCoords.from_design(design))
    free = {v.name for v in pm_model.free_RVs}
    assert "sigma_floor" not in free and "sigma_step" in free
    assert {"u_threshold", "z_jump", "p_max"} <= free  # the scheduler's regime mixture
