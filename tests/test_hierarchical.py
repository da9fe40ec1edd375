"""The PyMC model: its likelihood equals a hand computation, and its priors are plausible."""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from scipy import stats

from inference.estimator import StepTimeModel
from models.hierarchical import GroupCoords, build_model, per_model_matvec
from models.priors import DEFAULT_PRIORS


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


@pytest.fixture(scope="module")
def host_design(tiny_steps):
    model = StepTimeModel(target="cycle", priors=DEFAULT_PRIORS["cycle"].with_host())
    rows = tiny_steps["cycle_us"].notna().to_numpy()
    design = model.design(tiny_steps, rows=rows)
    return model, design, GroupCoords.from_design(design)


@pytest.mark.parametrize("host_bound", [False, True])
def test_log_likelihood_matches_gap_mixture_by_hand(cycle_design, host_design, host_bound):
    estimator, design, coords = host_design if host_bound else cycle_design
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
    beta = np.exp(log_beta)[model_idx]
    scale = np.exp(workload_effect[workload_idx])
    own, prefill, decode = (
        np.sum(beta * b, axis=1) * scale
        for b in (design.bases, design.prefill_bases, design.decode_bases)
    )
    if host_bound:  # each step lasts the soft max of GPU time and traced scheduler + launch
        host = design.host
        own = soft_max_by_hand(own, host.schedule_us)
        prefill = soft_max_by_hand(prefill, host.neighbour_schedule_us)
        decode = soft_max_by_hand(decode, host.neighbour_schedule_us)
    g, p = design.gap_steps, design.prefill_share
    m = g - 1
    sigma = np.sqrt(floor[model_idx] ** 2 + step[model_idx] ** 2 / g)
    log_y = np.log(design.y)

    def component(k):  # k of the m untraced steps carry a prefill chunk
        mean = (own + k * prefill + (m - k) * decode) / g
        return stats.t.logpdf(log_y, df=nu, loc=np.log(mean), scale=sigma)

    # k = 0, 1 exactly; "2 or more" at the binomial's conditional mean count
    w0, w1 = stats.binom.pmf(0, m, p), stats.binom.pmf(1, m, p)
    w2 = np.clip(1 - w0 - w1, 0, 1)
    k2 = np.where(w2 > 1e-12, (m * p - w1) / np.maximum(w2, 1e-300), 2)
    k2 = np.clip(k2, np.minimum(2, m), m)
    rate = 1 / (1 + np.exp(-point["stall_rate_logodds__"]))
    jump = 1 + np.exp(point["stall_jump_excess_log__"])
    spread = np.exp(point["stall_spread_log__"])
    q = 1 - (1 - rate) ** g
    average = (own + m * p * prefill + m * (1 - p) * decode) / g
    stall = stats.t.logpdf(
        log_y,
        df=nu,
        loc=np.log(average) + np.log1p((jump - 1) / g),
        scale=np.sqrt(sigma**2 + (spread * jump / (g + jump - 1)) ** 2),
    )
    terms = [
        np.log((1 - q) * np.maximum(w, 1e-300)) + component(np.minimum(k, m))
        for w, k in ((w0, 0.0), (w1, 1.0), (w2, k2))
    ]
    expected = np.logaddexp.reduce([*terms, np.log(q) + stall], axis=0).sum()
    assert logp == pytest.approx(expected, rel=1e-9)


def soft_max_by_hand(gpu_us: np.ndarray, schedule_us: np.ndarray) -> np.ndarray:
    host = schedule_us + 50.0  # + the nominal launch
    return (gpu_us**6 + host**6) ** (1 / 6)


def test_host_sub_model_fits_the_traced_scheduler_times(host_design):
    estimator, design, coords = host_design
    pm_model = build_model(design, estimator.priors, coords)
    observed = pm_model.rvs_to_values[pm_model["host::log_y"]]
    np.testing.assert_allclose(observed.data, np.log(design.host.schedule_us))
    assert "host::threshold" in pm_model.named_vars  # the scheduler's slow regime
    assert pm_model.named_vars_to_dims["host::log_beta"] == ("model", "host_basis")


def test_host_priors_need_a_host_design(cycle_design):
    estimator, design, coords = cycle_design
    with pytest.raises(ValueError, match="host part"):
        build_model(design, estimator.priors.with_host(), coords)


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


def test_chains_start_from_the_posterior_mode(cycle_design):
    from inference.estimator import posterior_mode, sample_nuts

    estimator, design, coords = cycle_design
    pm_model = build_model(design, estimator.priors, coords)
    mode = posterior_mode(pm_model, seed=0, progressbar=False)
    assert set(mode) == {rv.name for rv in pm_model.free_RVs}
    logp = pm_model.compile_logp()
    centre = pm_model.initial_point()
    at_mode = pm_model.initial_point()
    for rv in pm_model.free_RVs:
        value_var = pm_model.rvs_to_values[rv]
        transform = pm_model.rvs_to_transforms[rv]
        value = mode[rv.name] if transform is None else transform.forward(mode[rv.name]).eval()
        at_mode[value_var.name] = np.asarray(value, dtype=float)
    assert logp(at_mode) > logp(centre) + 10.0
    with pytest.raises(ValueError, match="unknown init"):
        sample_nuts(pm_model, 10, 10, 1, 0, init="prior")


def test_chain_starts_are_seeded_small_offsets_from_one_point():
    from inference.estimator import starts_near

    start = starts_near(lambda seed: np.arange(4.0), 0.05)
    np.testing.assert_array_equal(start(3), start(3))
    assert not np.allclose(start(0), start(1))
    assert np.max(np.abs(start(0) - np.arange(4.0))) < 0.3
