"""Posterior predictive of step times in plain numpy.

Shared by the PyMC-side estimator and the simulator-side sampler, so both give the
same numbers. Works on a :class:`PosteriorDraws` (flattened draws of the parameters the
predictive needs); groups the fit never saw are drawn through the hyperprior.
Importing this module never imports PyMC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    @property
    def n_draws(self) -> int:
        return self.nu.shape[0]

    def thin(self, n: int, rng: np.random.Generator) -> PosteriorDraws:
        """A random subset of ``n`` draws (all of them when there are fewer)."""
        if n >= self.n_draws:
            return self
        keep = np.sort(rng.choice(self.n_draws, size=n, replace=False))
        per_draw = (
            "log_beta_population",
            "a_moe",
            "log_beta",
            "workload_effect",
            "sigma_floor",
            "sigma_step",
            "nu",
        )
        changes = {name: getattr(self, name)[keep] for name in per_draw}
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


def log_mean_draws(
    draws: PosteriorDraws,
    bases: np.ndarray,
    model: np.ndarray,
    architecture: np.ndarray,
    workload: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """log of the noise-free step time, (draw, row), for rows of any mix of groups."""
    out = np.empty((draws.n_draws, bases.shape[0]))
    model = np.asarray(model, dtype=str)
    workload = np.asarray(workload, dtype=str)
    for m in np.unique(model):
        in_model = model == m
        arch = str(np.asarray(architecture)[in_model][0])
        beta = np.exp(coefficient_draws(draws, m, arch, rng))
        for w in np.unique(workload[in_model]):
            rows = in_model & (workload == w)
            effect = workload_draws(draws, w, rng)[:, None]
            out[:, rows] = np.log(beta @ bases[rows].T) + effect
    return out


def predictive_draws(
    draws: PosteriorDraws,
    bases: np.ndarray,
    model: np.ndarray,
    architecture: np.ndarray,
    workload: np.ndarray,
    gap_steps: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Posterior predictive step times (µs), (draw, row): parameter and noise uncertainty."""
    log_mean = log_mean_draws(draws, bases, model, architecture, workload, rng)
    sigma = np.empty_like(log_mean)
    model = np.asarray(model, dtype=str)
    for m in np.unique(model):
        rows = model == m
        floor, step = noise_draws(draws, str(m))
        sigma[:, rows] = np.sqrt(floor[:, None] ** 2 + step[:, None] ** 2 / gap_steps[rows])
    t = rng.standard_t(draws.nu[:, None], size=log_mean.shape)
    return np.exp(log_mean + sigma * t)


def mape_optimal_point(samples: np.ndarray, axis: int = 0) -> np.ndarray:
    """The point minimising expected absolute percentage error: the 1/y-weighted median."""
    samples = np.moveaxis(samples, axis, 0)
    ordered = np.sort(samples, axis=0)
    weights = 1.0 / ordered
    cumulative = np.cumsum(weights, axis=0)
    half = cumulative[-1] / 2.0
    index = np.argmax(cumulative >= half[None], axis=0)
    return np.take_along_axis(ordered, index[None], axis=0)[0]
