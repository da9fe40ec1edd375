"""The PyMC model: its likelihood equals a hand computation, and its priors are plausible."""

import dataclasses
import functools

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import stats

from inference.estimator import StepTimeModel
from inference.laplace import CURVATURE_FLOOR
from models.cycle_likelihood import cycle_mixture_logp
from models.design import Design
from models.hierarchical import (
    GroupCoords,
    build_model,
    cost_group_scales,
    cycle_rows,
    gap_mixture_components,
    per_model_matvec,
)
from models.mixture import ROW_BLOCK, mixture_logp
from models.priors import DEFAULT_PRIORS


@pytest.mark.parametrize("layout", ["shuffled", "runs"])
def test_per_model_matvec_equals_gathered_rows(layout):
    rng = np.random.default_rng(0)
    bases = rng.random((50, 3))
    if layout == "shuffled":
        model_idx = rng.integers(0, 3, 50)
    else:  # runs of rows, one model twice: a product per run, no reordering
        model_idx = np.repeat([2, 0, 1, 2], [10, 15, 5, 20])
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
    pm_model = build_model(design, estimator.priors, coords, forward=True)
    point = pm_model.initial_point()
    point = {k: v + 0.1 for k, v in point.items()}  # away from zeros
    logp = pm_model.compile_logp(vars=[pm_model["log_y"]], sum=True)(point)

    # The model's structure, written out: non-centred population → model coefficients.
    priors = estimator.priors.for_bases(design.basis_names)
    median = np.log([p.median for p in priors])
    log_sd = np.array([p.log_sd for p in priors])
    model_sd = np.array([p.model_sd for p in priors])
    log_beta = median + log_sd * point["u_population"] + model_sd * point["z_model"]
    # zero-sum workload effects: the average fitted workload is the reference
    (effect_of_point,) = pytensor.function(
        pm_model.value_vars,
        pm_model.replace_rvs_by_values([pm_model["workload_effect"]]),
        on_unused_input="ignore",
    )(*[point[v.name] for v in pm_model.value_vars])
    workload_effect = effect_of_point
    assert abs(workload_effect.sum()) < 1e-12
    assert len(workload_effect) < 2 or np.ptp(workload_effect) > 0  # and not all zero
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
    with build_model(design, estimator.priors, coords, forward=True):
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


def test_cost_groups_sample_the_same_density(cycle_design):
    """The sampler's cost-group coordinates (log total and share logits per model) give
    the forward model's density up to a constant, at the same log β."""
    estimator, design, coords = cycle_design
    forward = build_model(design, estimator.priors, coords, forward=True)
    grouped = build_model(design, estimator.priors, coords)
    (group,) = estimator.priors.cost_groups
    columns = [design.basis_names.index(name) for name in group]
    free = [i for i in range(len(design.basis_names)) if i not in columns]
    model_idx, _ = coords.indices(design)
    log_median = np.log([p.median for p in estimator.priors.for_bases(group)])
    scale = cost_group_scales(design.bases[:, columns], model_idx, len(coords.models), log_median)
    log_beta_of, grouped_log_beta_of = (value_of(m, "log_beta") for m in (forward, grouped))
    rng = np.random.default_rng(5)
    differences = []
    for _ in range(3):
        point = {
            k: v + rng.normal(0.0, 0.3, np.shape(v)) for k, v in forward.initial_point().items()
        }
        log_beta = log_beta_of(point)
        cost = log_beta[:, columns] + np.log(scale)
        mapped = {k: v for k, v in point.items() if k in grouped.initial_point()}
        mapped["z_model"] = point["z_model"][:, free]
        mapped["cost_group0_log_total"] = np.logaddexp.reduce(cost, axis=1)
        mapped["cost_group0_share_logits"] = cost[:, :-1] - cost[:, -1:]
        assert set(mapped) == set(grouped.initial_point())
        np.testing.assert_allclose(grouped_log_beta_of(mapped), log_beta, atol=1e-12)
        differences.append(grouped.compile_logp()(mapped) - forward.compile_logp()(point))
    np.testing.assert_allclose(differences, differences[0], atol=1e-8)
    # and the constant is the normal's −log(model_sd) per grouped coefficient
    model_sd = np.array([p.model_sd for p in estimator.priors.for_bases(group)])
    expected = -len(coords.models) * np.log(model_sd).sum()
    np.testing.assert_allclose(differences[0], expected, atol=1e-8)


def test_cost_group_weights_leave_a_basis_a_model_never_uses_out_of_its_total():
    bases = np.array([[2.0, 0.0, 1.0], [4.0, 0.0, 3.0], [1.0, 5.0, 1.0]])
    model_idx = np.array([0, 0, 1])
    log_median = np.log([1.5, 2.0, 1.0])
    scale = cost_group_scales(bases, model_idx, 3, log_median)
    np.testing.assert_allclose(scale[0, [0, 2]], [3.0, 2.0])  # the model's mean rows
    np.testing.assert_allclose(scale[0, 1] * 2.0, 1e-6 * (3.0 * 1.5 + 2.0 * 1.0))
    np.testing.assert_allclose(scale[1], [1.0, 5.0, 1.0])
    np.testing.assert_allclose(scale[2], 1.0)  # no rows: any positive weight


def value_of(pm_model: pm.Model, name: str):
    """A named variable of ``pm_model`` as a function of a point of its value variables."""
    function = pytensor.function(
        pm_model.value_vars,
        pm_model.replace_rvs_by_values([pm_model[name]]),
        on_unused_input="ignore",
    )
    return lambda point: function(*[point[v.name] for v in pm_model.value_vars])[0]


def test_single_step_target_has_no_separate_noise_floor(tiny_steps):
    estimator = StepTimeModel(target="schedule")
    design = estimator.design(tiny_steps)
    pm_model = build_model(design, estimator.priors, GroupCoords.from_design(design))
    free = {v.name for v in pm_model.free_RVs}
    assert "sigma_floor" not in free and "sigma_step" in free
    # the scheduler's regime mixture
    assert {"u_threshold", "z_jump", "z_growth", "u_logit_p_max", "width"} <= free


def test_regime_likelihood_equals_the_predictive_formulas(tiny_steps):
    """The PyMC regime mixture at a random point equals a numpy mixture built from the
    predictive's own P(slow) and slow/fast ratio — the functions the sampler uses."""
    from inference.predictive import slow_log_jump, slow_probability

    estimator = StepTimeModel(target="schedule")
    design = estimator.design(tiny_steps)
    coords = GroupCoords.from_design(design)
    pm_model = build_model(design, estimator.priors, coords)
    rng = np.random.default_rng(4)
    point = {
        k: v + 0.3 * rng.standard_normal(np.shape(v)) for k, v in pm_model.initial_point().items()
    }
    names = ["log_beta", "workload_effect", "sigma_step", "nu", "threshold", "jump", "growth"]
    names += ["p_max", "width", "slow_sigma"]
    outputs = pm_model.replace_rvs_by_values([pm_model[n] for n in names])
    outputs.append(pm_model.logp(vars=[pm_model["log_y"]]))
    inputs = pm_model.value_vars
    fn = pytensor.function(inputs, outputs, on_unused_input="ignore")
    *computed, loglik = fn(*[point[v.name] for v in inputs])
    values = dict(zip(names, computed, strict=True))

    m, w = coords.indices(design)
    running = design.running_reqs
    fast = np.sum(design.bases * np.exp(values["log_beta"][m]), axis=1)
    log_fast = np.log(fast) + values["workload_effect"][w]
    p_slow = slow_probability(values["p_max"][m], values["threshold"][m], values["width"], running)
    log_slow = log_fast + slow_log_jump(
        values["jump"][m], values["growth"][m], values["threshold"][m], running
    )
    y, nu = np.log(design.y), values["nu"]
    expected = np.logaddexp(
        np.log1p(-p_slow) + stats.t.logpdf(y, nu, log_fast, values["sigma_step"][m]),
        np.log(p_slow) + stats.t.logpdf(y, nu, log_slow, values["slow_sigma"][m]),
    ).sum()
    assert float(loglik) == pytest.approx(expected, rel=1e-9)
    assert np.ptp(values["growth"]) > 0 and 0 < p_slow.max() < 1  # the point exercises both


@pytest.fixture(scope="module")
def laplace(host_design):
    from inference.laplace import laplace_frame

    estimator, design, coords = host_design
    pm_model = build_model(design, estimator.priors, coords)
    return pm_model, laplace_frame(pm_model, seed=0, progressbar=False)


@functools.cache
def _shapes(pm_model) -> tuple[tuple[str, tuple[int, ...]], ...]:
    start = pm_model.initial_point()
    return tuple((v.name, start[v.name].shape) for v in pm_model.value_vars)


def _point(pm_model, flat: np.ndarray) -> dict[str, np.ndarray]:
    point, offset = {}, 0
    for name, shape in _shapes(pm_model):
        size = int(np.prod(shape))
        point[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return point


def test_laplace_frame_whitens_the_posterior_at_its_mode(laplace):
    pm_model, frame = laplace
    logp, dlogp = pm_model.compile_logp(), pm_model.compile_dlogp()
    assert logp(_point(pm_model, frame.mode)) > logp(pm_model.initial_point()) + 10.0

    def whitened_gradient(z: np.ndarray) -> np.ndarray:
        return frame.whitening.T @ dlogp(_point(pm_model, frame.mode + frame.whitening @ z))

    n = frame.mode.size
    assert np.max(np.abs(whitened_gradient(np.zeros(n)))) < 0.05  # a mode
    # unit curvature in every whitened direction: the sampler sees ~N(0, I) near the mode
    step = 1e-4
    curvature = np.column_stack(
        [(whitened_gradient(-step * e) - whitened_gradient(step * e)) / step / 2 for e in np.eye(n)]
    )
    stiff = frame.curvature > 10 * CURVATURE_FLOOR
    np.testing.assert_allclose(curvature[np.ix_(stiff, stiff)], np.eye(stiff.sum()), atol=0.02)
    assert frame.condition_number > 100  # the original coordinates were badly scaled


def test_whitened_model_keeps_the_density_and_every_named_value(laplace):
    from inference.laplace import WHITENED, whitened_model

    pm_model, frame = laplace
    white = whitened_model(pm_model, frame)
    kept = [v.name for v in pm_model.free_RVs + pm_model.deterministics]
    assert {v.name for v in white.free_RVs} == {WHITENED}
    assert {v.name for v in white.deterministics} == set(kept)
    for name in kept:
        assert white.named_vars_to_dims.get(name) == pm_model.named_vars_to_dims.get(name)
    values_of_original = pytensor.function(
        pm_model.value_vars,
        pm_model.replace_rvs_by_values([pm_model[n] for n in kept]),
        on_unused_input="ignore",
    )
    values_of_white = pytensor.function(
        white.value_vars, white.replace_rvs_by_values([white[n] for n in kept])
    )
    white_logp, original_logp = white.compile_logp(), pm_model.compile_logp()
    for seed in range(3):
        z = np.random.default_rng(seed).standard_normal(frame.mode.size)
        original = _point(pm_model, frame.mode + frame.whitening @ z)
        np.testing.assert_allclose(white_logp({WHITENED: z}), original_logp(original), rtol=1e-10)
        ordered = [original[v.name] for v in pm_model.value_vars]
        for a, b in zip(values_of_white(z), values_of_original(*ordered), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10)


def test_unknown_init_is_refused(cycle_design):
    from inference.estimator import sample_nuts

    estimator, design, coords = cycle_design
    pm_model = build_model(design, estimator.priors, coords)
    with pytest.raises(ValueError, match="unknown init"):
        sample_nuts(pm_model, 10, 10, 1, 0, init="prior")


def test_chain_starts_are_seeded_small_offsets_from_one_point():
    from inference.estimator import starts_near

    start = starts_near(lambda seed: np.arange(4.0), 0.05)
    np.testing.assert_array_equal(start(3), start(3))
    assert not np.allclose(start(0), start(1))
    assert np.max(np.abs(start(0) - np.arange(4.0))) < 0.3


@pytest.mark.parametrize(
    ("sampler", "init"), [("nutpie", "laplace"), ("pymc", "laplace"), ("nutpie", "map")]
)
def test_both_samplers_return_the_original_variables(tiny_steps, sampler, init):
    from inference.laplace import WHITENED

    model = StepTimeModel(target="cycle").fit(
        tiny_steps,
        draws=30,
        tune=30,
        chains=1,
        seed=0,
        sampler=sampler,
        progressbar=False,
        init=init,
    )
    for group in ("posterior", "warmup_posterior"):
        if group in model.idata_.groups():
            assert WHITENED not in model.idata_[group]
            assert not any(d.startswith(WHITENED) for d in model.idata_[group].dims)
    post = model.idata_.posterior
    assert post["log_beta"].dims == ("chain", "draw", "model", "basis")
    assert np.all(post["sigma_step"] > 0) and np.all(np.isfinite(post["log_beta"]))
    # "map" keeps the model's own coordinates: only the origin moves to the mode
    assert (post.attrs["laplace_condition_number"] > 1.0) == (init == "laplace")


def take_rows(design: Design, rows: np.ndarray) -> Design:
    """The design's rows ``rows``, in that order."""
    per_row = {
        f.name: getattr(design, f.name)[rows]
        for f in dataclasses.fields(design)
        if isinstance(getattr(design, f.name), np.ndarray)
    }
    return dataclasses.replace(design, **per_row)


def random_parameters(coords: GroupCoords, n_bases: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n_models, n_workloads = len(coords.models), len(coords.workloads)
    return {
        "beta": np.exp(rng.normal(0.0, 0.3, (n_models, n_bases))),
        "scale": np.exp(rng.normal(0.0, 0.1, n_workloads)),
        "sigma_floor": rng.uniform(0.02, 0.1, n_models),
        "sigma_step": rng.uniform(0.1, 0.4, n_models),
        "nu": np.array(4.5),
        "rate": np.array(0.02),
        "jump": np.array(6.0),
        "spread": np.array(0.3),
    }


def test_fused_cycle_kernel_equals_the_graph_mixture(cycle_design):
    """Value and gradient of the fused kernel equal the same mixture built as a PyTensor
    graph and scored by the plain kernel: rows over three blocks, the last one partial,
    models shuffled so that every run of one model is a row or two, single-step rows."""
    estimator, design, coords = cycle_design
    rng = np.random.default_rng(0)
    design = take_rows(design, rng.integers(0, len(design), 2 * ROW_BLOCK + 77))
    gap_steps = design.gap_steps.copy()
    gap_steps[::7] = 1.0
    design = dataclasses.replace(design, gap_steps=gap_steps)
    model_idx, workload_idx = coords.indices(design)
    values = random_parameters(coords, len(design.basis_names), seed=1)
    params = {name: pt.as_tensor(value).type() for name, value in values.items()}
    names = list(params)
    value = np.log(design.y)
    fused = cycle_mixture_logp(
        value, cycle_rows(design, model_idx, workload_idx), *(params[n] for n in names)
    )
    stall = (params["rate"], params["jump"], params["spread"])
    components = gap_mixture_components(
        design, model_idx, workload_idx, *(params[n] for n in names[:4]), None, stall
    )
    graph = mixture_logp(value, params["nu"], *components)
    upstream = rng.uniform(0.5, 1.5, len(design))  # any upstream, not only a sum's ones
    inputs = [params[n] for n in names]
    outputs = []
    for logp in (fused, graph):
        outputs += [logp, *pytensor.grad(pt.sum(upstream * logp), inputs)]
    for mode in ("FAST_RUN", "NUMBA"):
        results = pytensor.function(inputs, outputs, mode=mode)(*values.values())
        half = len(results) // 2
        for name, got, want in zip(["logp", *names], results[:half], results[half:], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=f"{mode} {name}")


def test_compiled_model_makes_one_pass_and_its_gradient_is_right(cycle_design):
    """What nutpie compiles: one fused node serves the log density and its gradient, and
    the gradient equals central finite differences of the log density."""
    estimator, design, coords = cycle_design
    pm_model = build_model(design, estimator.priors, coords)
    function = pm_model.logp_dlogp_function(ravel_inputs=True, mode="NUMBA")
    function.set_extra_values({})
    nodes = [type(n.op).__name__ for n in function._pytensor_function.maker.fgraph.apply_nodes]
    assert [n for n in nodes if n.startswith("CycleMixture")] == ["CycleMixtureLogpGrad"]
    rng = np.random.default_rng(2)
    point = np.concatenate([v.ravel() for v in pm_model.initial_point().values()])
    point += rng.normal(0.0, 0.3, point.size)
    _, gradient = function(point)
    step = 1e-6
    numeric = [
        (function(point + step * e)[0] - function(point - step * e)[0]) / (2 * step)
        for e in np.eye(point.size)
    ]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-5)
