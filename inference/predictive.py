"""Posterior predictive of step times in plain numpy.

Shared by the PyMC-side estimator and the simulator-side sampler, so both give the
same numbers. Works on a :class:`PosteriorDraws` (flattened draws of the parameters the
predictive needs); groups the fit never saw are drawn through the hyperprior.
Importing this module never imports PyMC.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from models.basis import host_bound_step_us


def slow_probability(p_max, threshold, width, running):
    """P(slow step) = p_max · sigmoid((running − threshold) / width); broadcasts.

    The sigmoid is written as (1 + tanh(z/2)) / 2, which never overflows.
    """
    return p_max * 0.5 * (1.0 + np.tanh(0.5 * (np.asarray(running) - threshold) / width))


def slow_log_jump(jump, growth, threshold, running):
    """log(slow / fast time) = jump + growth · log(running / threshold); broadcasts.

    Both counts are floored at one request, so an empty queue or an unseen model's
    threshold drawn near zero stay finite.
    """
    ratio = np.maximum(np.asarray(running, dtype=float), 1.0) / np.maximum(threshold, 1.0)
    return jump + growth * np.log(ratio)


@dataclass(frozen=True)
class ModelRegime:
    """The slow regime of one model, per draw (each field (draw,))."""

    threshold: np.ndarray
    jump: np.ndarray
    growth: np.ndarray
    slow_sigma: np.ndarray
    p_max: np.ndarray
    width: np.ndarray

    def p_slow(self, running) -> np.ndarray:
        """(…, draw) P(slow) at running-queue depths broadcast against the draw axis."""
        return slow_probability(self.p_max, self.threshold, self.width, running)

    def log_jump(self, running) -> np.ndarray:
        """(…, draw) log slow/fast time ratio, broadcast as :meth:`p_slow`."""
        return slow_log_jump(self.jump, self.growth, self.threshold, running)

    def central(self) -> ModelRegime:
        """One draw of central values: means of the log-scale parameters, medians of the rest."""
        return ModelRegime(
            threshold=np.array([np.mean(self.threshold)]),
            jump=np.array([np.mean(self.jump)]),
            growth=np.array([np.mean(self.growth)]),
            slow_sigma=np.array([np.median(self.slow_sigma)]),
            p_max=np.array([np.median(self.p_max)]),
            width=np.array([np.median(self.width)]),
        )

    def take(self, keep) -> ModelRegime:
        return ModelRegime(*(getattr(self, f.name)[keep] for f in fields(self)))


@dataclass(frozen=True)
class RegimeDraws:
    """Draws of the scheduler's slow-regime mixture (``schedule`` fits only); see
    :class:`models.priors.RegimePrior`. p_max is a probability, pooled on the logit scale."""

    threshold: np.ndarray  # (draw, model) running requests where the switch is half-way
    threshold_population: np.ndarray  # (draw,)
    jump: np.ndarray  # (draw, model) log slow/fast ratio at the threshold
    jump_population: np.ndarray  # (draw,)
    growth: np.ndarray  # (draw, model) exponent of the slow ratio in running / threshold
    growth_population: np.ndarray  # (draw,)
    slow_sigma: np.ndarray  # (draw, model)
    p_max: np.ndarray  # (draw, model)
    p_max_population: np.ndarray  # (draw,)
    width: np.ndarray  # (draw,) requests over which the switch happens
    threshold_model_sd: float
    jump_model_sd: float
    growth_model_sd: float
    p_max_model_sd: float  # logit scale

    PER_DRAW = (
        "threshold",
        "threshold_population",
        "jump",
        "jump_population",
        "growth",
        "growth_population",
        "slow_sigma",
        "p_max",
        "p_max_population",
        "width",
    )
    PER_MODEL = ("threshold", "jump", "growth", "slow_sigma", "p_max")
    HYPERPARAMETERS = ("threshold_model_sd", "jump_model_sd", "growth_model_sd", "p_max_model_sd")

    def take(self, keep: np.ndarray) -> RegimeDraws:
        changes = {name: getattr(self, name)[keep] for name in self.PER_DRAW}
        return RegimeDraws(**{**self.__dict__, **changes})

    def for_model(self, draws: PosteriorDraws, model: str, rng: np.random.Generator) -> ModelRegime:
        """The regime per draw of one model; an unseen model via the hyperprior."""
        if model in draws.models:
            i = draws.models.index(model)
            return ModelRegime(
                *(getattr(self, name)[:, i] for name in self.PER_MODEL), width=self.width
            )
        n = self.width.shape[0]
        threshold = self.threshold_population + self.threshold_model_sd * rng.standard_normal(n)
        jump = self.jump_population + self.jump_model_sd * rng.standard_normal(n)
        growth = self.growth_population + self.growth_model_sd * rng.standard_normal(n)
        logit = np.log(self.p_max_population / (1.0 - self.p_max_population))
        p_max = 1.0 / (1.0 + np.exp(-(logit + self.p_max_model_sd * rng.standard_normal(n))))
        return ModelRegime(
            threshold, jump, growth, self.slow_sigma.mean(axis=1), p_max, width=self.width
        )


@dataclass(frozen=True)
class StallDraws:
    """Draws of the rare-stall component (``cycle`` fits): a stalled step takes
    exp(log_jump + spread·z) times longer, z ~ N(0, 1); steps stall with prob. ``rate``."""

    rate: np.ndarray  # (draw,)
    log_jump: np.ndarray  # (draw,)
    spread: np.ndarray  # (draw,)

    PER_DRAW = ("rate", "log_jump", "spread")

    def take(self, keep: np.ndarray) -> StallDraws:
        return StallDraws(*(getattr(self, name)[keep] for name in self.PER_DRAW))

    def multipliers(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Per-step time multipliers of ``shape`` whose last axis is the draw: J for a
        stalled step, 1 otherwise."""
        stalled = rng.random(shape) < self.rate
        jump = np.exp(self.log_jump + self.spread * rng.standard_normal(shape))
        return np.where(stalled, jump, 1.0)

    def mean_multiplier(self) -> np.ndarray:
        """Expected step-time multiplier per draw: 1 + rate · (E[J] − 1)."""
        return 1.0 + self.rate * np.expm1(self.log_jump + 0.5 * self.spread**2)


@dataclass(frozen=True)
class PosteriorDraws:
    """Flattened posterior draws (axis 0 = draw) and the fixed hyperparameters."""

    basis_names: tuple[str, ...]
    models: tuple[str, ...]
    workloads: tuple[str, ...]
    log_beta_population: np.ndarray  # (draw, basis)
    a_moe: np.ndarray  # (draw, basis)
    log_beta: np.ndarray  # (draw, model, basis)
    workload_effect: np.ndarray  # (draw, workload)
    sigma_floor: np.ndarray  # (draw, model)
    sigma_step: np.ndarray  # (draw, model)
    nu: np.ndarray  # (draw,)
    model_sd: np.ndarray  # (basis,) fixed between-model spread
    moe_sd: np.ndarray  # (basis,) fixed MoE-offset prior scale
    workload_sd: float
    regime: RegimeDraws | None = None
    stall: StallDraws | None = None
    host: PosteriorDraws | None = None  # the scheduler regression of a host-bound cycle fit

    PER_DRAW = (
        "log_beta_population",
        "a_moe",
        "log_beta",
        "workload_effect",
        "sigma_floor",
        "sigma_step",
        "nu",
    )

    @property
    def n_draws(self) -> int:
        return self.nu.shape[0]

    def thin(self, n: int, rng: np.random.Generator) -> PosteriorDraws:
        """A random subset of ``n`` draws (all of them when there are fewer)."""
        if n >= self.n_draws:
            return self
        return self.take(np.sort(rng.choice(self.n_draws, size=n, replace=False)))

    def take(self, keep: np.ndarray) -> PosteriorDraws:
        """The draws at positions ``keep`` (the same ones of every part)."""
        changes = {name: getattr(self, name)[keep] for name in self.PER_DRAW}
        for part in ("regime", "stall", "host"):
            if getattr(self, part) is not None:
                changes[part] = getattr(self, part).take(keep)
        return PosteriorDraws(**{**self.__dict__, **changes})


def coefficient_draws(
    draws: PosteriorDraws, model: str, architecture: str, rng: np.random.Generator
) -> np.ndarray:
    """log β draws (draw, basis) for a model; an unseen one comes from the hyperprior."""
    if model in draws.models:
        return draws.log_beta[:, draws.models.index(model)]
    z = rng.standard_normal(draws.log_beta_population.shape)
    moe = draws.moe_sd * draws.a_moe if architecture == "moe" else 0.0
    return draws.log_beta_population + moe + draws.model_sd * z


def noise_draws(draws: PosteriorDraws, model: str) -> tuple[np.ndarray, np.ndarray]:
    """(σ_floor, σ_step) per draw; an unseen model takes the mean over the fitted models."""
    if model in draws.models:
        i = draws.models.index(model)
        return draws.sigma_floor[:, i], draws.sigma_step[:, i]
    return draws.sigma_floor.mean(axis=1), draws.sigma_step.mean(axis=1)


def workload_draws(draws: PosteriorDraws, workload: str, rng: np.random.Generator) -> np.ndarray:
    """Workload effect per draw; an unseen workload comes from its fixed-scale prior."""
    if workload in draws.workloads:
        return draws.workload_effect[:, draws.workloads.index(workload)]
    return draws.workload_sd * rng.standard_normal(draws.n_draws)


def mean_draws(
    draws: PosteriorDraws,
    bases: tuple[np.ndarray, ...],
    model: np.ndarray,
    architecture: np.ndarray,
    workload: np.ndarray,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Noise-free step time (µs), (draw, row), of each basis matrix in ``bases`` (all
    rows aligned) — one coefficient draw per group shared by all of them."""
    out = [np.empty((draws.n_draws, bases[0].shape[0])) for _ in bases]
    model = np.asarray(model, dtype=str)
    workload = np.asarray(workload, dtype=str)
    for m in np.unique(model):
        in_model = model == m
        arch = str(np.asarray(architecture)[in_model][0])
        beta = np.exp(coefficient_draws(draws, m, arch, rng))
        for w in np.unique(workload[in_model]):
            rows = in_model & (workload == w)
            effect = np.exp(workload_draws(draws, w, rng))[:, None]
            for target, matrix in zip(out, bases, strict=True):
                target[:, rows] = (beta @ matrix[rows].T) * effect
    return out


def predictive_draws(
    draws: PosteriorDraws,
    bases: np.ndarray,
    model: np.ndarray,
    architecture: np.ndarray,
    workload: np.ndarray,
    gap_steps: np.ndarray,
    rng: np.random.Generator,
    running_reqs: np.ndarray | None = None,
    gap_composition: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    host_bases: np.ndarray | None = None,
) -> np.ndarray:
    """Posterior predictive step times (µs), (draw, row): parameter and noise uncertainty.

    A row that averages ``gap_steps`` steps draws how many of its untraced steps carry a
    prefill chunk, Binomial(gap − 1, share), from ``gap_composition`` = (prefill share,
    prefill bases, decode bases); without it the untraced steps are copies of the row's
    own. With a stall component one of a gap's steps stalls with prob. 1 − (1 − rate)^gap.
    ``running_reqs`` is needed by fits with a scheduler regime, ``host_bases`` (the
    scheduler bases of the rows) by host-bound cycle fits: each step's scheduler time is
    drawn from the fit's host regression — one draw for the traced step, one for the rest
    of its gap — and the step lasts :func:`models.basis.host_bound_step_us` of the two.
    """
    gap_steps = np.asarray(gap_steps, dtype=float)
    untraced = gap_steps - 1.0
    if gap_composition is None:
        (own,) = mean_draws(draws, (bases,), model, architecture, workload, rng)
        prefill = decode = own
        k = np.zeros(own.shape)
    else:
        share, prefill_bases, decode_bases = gap_composition
        own, prefill, decode = mean_draws(
            draws, (bases, prefill_bases, decode_bases), model, architecture, workload, rng
        )
        k = rng.binomial(untraced.astype(int), share, size=own.shape)
    if draws.host is not None:
        if host_bases is None or running_reqs is None:
            raise ValueError("this fit prices host-bound steps: pass host_bases and running_reqs")
        single = np.ones(len(gap_steps))
        traced_host, gap_host = (
            predictive_draws(
                draws.host, host_bases, model, architecture, workload, single, rng, running_reqs
            )
            for _ in range(2)
        )
        own = host_bound_step_us(own, traced_host)
        prefill = host_bound_step_us(prefill, gap_host)
        decode = host_bound_step_us(decode, gap_host)
    mean = (own + k * prefill + (untraced - k) * decode) / gap_steps
    log_mean = np.log(mean)
    sigma = np.empty_like(log_mean)
    model = np.asarray(model, dtype=str)
    for m in np.unique(model):
        rows = model == m
        floor, step = noise_draws(draws, str(m))
        sigma[:, rows] = np.sqrt(floor[:, None] ** 2 + step[:, None] ** 2 / gap_steps[rows])
    if draws.regime is not None:
        if running_reqs is None:
            raise ValueError("this fit has a scheduler regime: pass running_reqs")
        for m in np.unique(model):
            rows = model == m
            regime = draws.regime.for_model(draws, str(m), rng)
            running = np.asarray(running_reqs)[rows][:, None]  # against the draw axis
            slow = rng.random((draws.n_draws, int(rows.sum()))) < regime.p_slow(running).T
            log_mean[:, rows] += np.where(slow, regime.log_jump(running).T, 0.0)
            sigma[:, rows] = np.where(slow, regime.slow_sigma[:, None], sigma[:, rows])
    if draws.stall is not None:
        stalled = rng.random(log_mean.shape) < 1.0 - (1.0 - draws.stall.rate[:, None]) ** gap_steps
        jump = np.exp(
            draws.stall.log_jump[:, None]
            + draws.stall.spread[:, None] * rng.standard_normal(log_mean.shape)
        )
        log_mean += np.where(stalled, np.log1p((jump - 1.0) / gap_steps), 0.0)
    t = rng.standard_t(draws.nu[:, None], size=log_mean.shape)
    return np.exp(log_mean + sigma * t)


def design_predictive(draws: PosteriorDraws, design, rng: np.random.Generator) -> np.ndarray:
    """:func:`predictive_draws` for the rows of a :class:`models.design.Design`."""
    return predictive_draws(
        draws,
        design.bases,
        design.model,
        design.architecture,
        design.workload,
        design.gap_steps,
        rng,
        running_reqs=design.running_reqs,
        gap_composition=(design.prefill_share, design.prefill_bases, design.decode_bases),
        host_bases=None if design.host is None else design.host.bases,
    )


def summarize_predictive(samples: np.ndarray, index, quantiles: tuple[float, ...]):
    """Per row: MAPE-optimal point, mean and the requested quantiles (µs), as a DataFrame."""
    import pandas as pd

    out = pd.DataFrame(index=np.asarray(index))
    out["point_us"] = mape_optimal_point(samples)
    out["mean_us"] = samples.mean(axis=0)
    for q, row in zip(quantiles, np.quantile(samples, quantiles, axis=0), strict=True):
        out[f"q{q:g}"] = row
    return out


def mape_optimal_point(samples: np.ndarray, axis: int = 0, winsor: float = 0.005) -> np.ndarray:
    """The point minimising expected absolute percentage error: the 1/y-weighted median.

    Samples are first winsorised at the ``winsor`` and ``1 − winsor`` quantiles: under a
    log-Student-t E[1/y] is infinite, so without it the few smallest draws would carry
    the weight and drag the point towards zero.
    """
    samples = np.moveaxis(samples, axis, 0)
    if winsor > 0:
        low, high = np.quantile(samples, [winsor, 1.0 - winsor], axis=0)
        samples = np.clip(samples, low, high)
    ordered = np.sort(samples, axis=0)
    weights = 1.0 / ordered
    cumulative = np.cumsum(weights, axis=0)
    half = cumulative[-1] / 2.0
    index = np.argmax(cumulative >= half[None], axis=0)
    return np.take_along_axis(ordered, index[None], axis=0)[0]
