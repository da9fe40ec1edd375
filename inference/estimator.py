"""``StepTimeModel``: fit, predict, sample the posterior predictive, save and load.

A plain estimator in the Bambi / pymc-marketing mould: configuration in the
constructor, learnt state in attributes ending in ``_``, posterior as ArviZ
InferenceData with labelled dims, one folder on disk.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from data_prep.schema import TARGETS
from data_prep.specs import (
    HardwareSpec,
    ModelSpec,
    get_model_spec,
    load_hardware,
)
from inference.laplace import drop_whitened, laplace_frame, whitened_model
from inference.predictive import (
    PosteriorDraws,
    RegimeDraws,
    StallDraws,
    design_predictive,
    summarize_predictive,
)
from models.basis import BASIS_SET_VERSION, DEFAULT_BASIS_SETS
from models.design import Design, build_design
from models.priors import DEFAULT_PRIORS, HOST_MODEL, PriorConfig

POSTERIOR_FILE = "posterior.nc"
CONFIG_FILE = "model.json"
FORMAT_VERSION = 2  # 2: the scheduler regime has per-model p_max, growth and a learnt width


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("steptime")
    except PackageNotFoundError:
        package = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{package}+{commit}" if commit else package


def data_hash(design: Design) -> str:
    """Fingerprint of exactly what the likelihood saw."""
    digest = hashlib.sha256()
    arrays = (design.bases, design.y, design.gap_steps)
    arrays += (design.prefill_share, design.prefill_bases, design.decode_bases)
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=float).tobytes())
    for labels in (design.model, design.workload):
        digest.update("\x00".join(map(str, labels)).encode())
    return digest.hexdigest()[:16]


@dataclass
class StepTimeModel:
    """Hierarchical Bayesian step-time regression for one target (``cycle`` or ``schedule``)."""

    target: str = "cycle"
    basis_names: tuple[str, ...] | None = None
    priors: PriorConfig | None = None
    hardware: str = "h100-sxm"
    model_config_dirs: tuple[str, ...] = ()
    host_basis_names: tuple[str, ...] | None = None  # scheduler bases of host-bound fits
    specs_: dict[str, ModelSpec] = field(default_factory=dict)
    idata_: az.InferenceData | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {sorted(TARGETS)}, not {self.target!r}")
        if self.priors is None:
            self.priors = DEFAULT_PRIORS[self.target]
        if self.basis_names is None:
            self.basis_names = DEFAULT_BASIS_SETS[self.target]
        self.basis_names = tuple(self.basis_names)
        self.priors.for_bases(self.basis_names)
        if self.priors.host is not None:
            if self.target != "cycle":
                raise ValueError("only cycle fits price host-bound steps")
            if self.host_basis_names is None:
                self.host_basis_names = DEFAULT_BASIS_SETS["schedule"]
            self.host_basis_names = tuple(self.host_basis_names)
            self.priors.host.for_bases(self.host_basis_names)
        elif self.host_basis_names is not None:
            raise ValueError("host_basis_names need host priors (PriorConfig.with_host())")

    # --- configuration helpers -------------------------------------------------------

    @property
    def hardware_spec(self) -> HardwareSpec:
        return load_hardware(self.hardware)

    def resolve_specs(self, models, extra: dict[str, ModelSpec] | None = None) -> dict:
        """Specs for the named models: given, fitted, shipped or from --model-config dirs."""
        specs = dict(self.specs_)
        specs.update(extra or {})
        for name in set(models) - set(specs):
            specs[name] = get_model_spec(name, [Path(d) for d in self.model_config_dirs])
        return specs

    def design(
        self,
        steps: pd.DataFrame,
        rows: np.ndarray | None = None,
        specs: dict[str, ModelSpec] | None = None,
    ) -> Design:
        specs = self.resolve_specs(steps["model"].unique(), specs)
        return build_design(
            steps,
            self.target,
            self.basis_names,
            specs,
            self.hardware_spec,
            rows=rows,
            host_basis_names=self.host_basis_names,
        )

    # --- fitting -----------------------------------------------------------------------

    def fit(
        self,
        steps: pd.DataFrame,
        rows: np.ndarray | None = None,
        *,
        draws: int = 1000,
        tune: int = 1000,
        chains: int = 4,
        seed: int = 0,
        sampler: str = "nutpie",
        progressbar: bool = True,
        target_accept: float = 0.95,
        init: str = "map",
    ) -> StepTimeModel:
        """Sample the posterior by NUTS on ``steps[rows]`` (rows with a target only).

        ``init="map"`` starts the chains at the posterior mode found by L-BFGS, in the
        model's own coordinates; ``"laplace"`` samples around it in coordinates whitened
        by its curvature (see :mod:`inference.laplace`: far fewer warm-up gradients on
        ~100K rows, worse mixing per draw on a few thousand); ``"support_point"`` jitters
        the chains around the priors' centres, as nutpie does by default.
        """
        from models.hierarchical import GroupCoords, build_model

        mask = np.ones(len(steps), dtype=bool) if rows is None else np.array(rows, dtype=bool)
        mask &= steps[TARGETS[self.target]].notna().to_numpy()
        if not mask.any():
            raise ValueError(f"no rows with a {self.target} target to fit")
        self.specs_ = self.resolve_specs(steps.loc[mask, "model"].unique())
        design = self.design(steps, rows=mask)
        coords = GroupCoords.from_design(design)
        pm_model = build_model(design, self.priors, coords)
        started = time.perf_counter()
        idata = sample_nuts(
            pm_model, draws, tune, chains, seed, sampler, progressbar, target_accept, init
        )
        idata.posterior.attrs.update(
            {
                "target": self.target,
                "basis_set_version": BASIS_SET_VERSION,
                "basis_names": json.dumps(list(self.basis_names)),
                "host_basis_names": json.dumps(
                    None if self.host_basis_names is None else list(self.host_basis_names)
                ),
                "data_hash": data_hash(design),
                "n_observations": int(len(design)),
                "code_version": code_version(),
                "sampler": sampler,
                "seed": int(seed),
                "init": init,
                "sampling_seconds": round(time.perf_counter() - started, 2),
                "model_architectures": json.dumps(
                    dict(zip(coords.models, coords.model_architectures, strict=True))
                ),
            }
        )
        self.idata_ = idata
        return self

    # --- prediction --------------------------------------------------------------------

    def posterior_draws(self) -> PosteriorDraws:
        """The posterior flattened over chains, in the layout the predictive uses."""
        if self.idata_ is None:
            raise RuntimeError("the model is not fitted; call fit() or load()")
        post = self.idata_.posterior.stack(sample=("chain", "draw")).transpose("sample", ...)
        draws = _draws_of(post, self.basis_names, self.priors, prefix="", basis_dim="basis")
        if self.priors.host is None:
            return draws
        host = _draws_of(
            post,
            self.host_basis_names,
            self.priors.host,
            prefix=f"{HOST_MODEL}::",
            basis_dim="host_basis",
        )
        return replace(draws, host=host)

    def sample_posterior_predictive(
        self,
        steps: pd.DataFrame,
        rows: np.ndarray | None = None,
        *,
        n_draws: int = 1000,
        seed: int = 0,
        specs: dict[str, ModelSpec] | None = None,
    ) -> xr.DataArray:
        """Predictive step times (µs) with dims (draw, row); unseen groups via hyperpriors."""
        rng = np.random.default_rng(seed)
        design = self.design(steps, rows=rows, specs=specs)
        draws = self.posterior_draws().thin(n_draws, rng)
        samples = design_predictive(draws, design, rng)
        index = steps.index if rows is None else steps.index[np.asarray(rows, bool)]
        return xr.DataArray(
            samples,
            dims=("draw", "row"),
            coords={"row": np.asarray(index)},
            name=f"{self.target}_us",
            attrs={"units": "us", "target": self.target},
        )

    def predict(
        self,
        steps: pd.DataFrame,
        rows: np.ndarray | None = None,
        *,
        quantiles: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95),
        n_draws: int = 1000,
        seed: int = 0,
        specs: dict[str, ModelSpec] | None = None,
    ) -> pd.DataFrame:
        """Point (MAPE-optimal), mean and quantiles of the predictive per row, in µs."""
        samples = self.sample_posterior_predictive(
            steps, rows, n_draws=n_draws, seed=seed, specs=specs
        )
        return summarize_predictive(samples.values, samples["row"].values, quantiles)

    # --- persistence -------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Posterior (netCDF, with provenance attrs) plus the configuration as JSON."""
        if self.idata_ is None:
            raise RuntimeError("nothing to save: the model is not fitted")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.idata_.to_netcdf(folder / POSTERIOR_FILE)
        config = {
            "format_version": FORMAT_VERSION,
            "target": self.target,
            "basis_names": list(self.basis_names),
            "host_basis_names": None
            if self.host_basis_names is None
            else list(self.host_basis_names),
            "basis_set_version": BASIS_SET_VERSION,
            "priors": self.priors.to_dict(),
            "hardware": self.hardware_spec.to_dict(),
            "model_specs": {name: spec.to_dict() for name, spec in self.specs_.items()},
            "model_config_dirs": list(self.model_config_dirs),
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> StepTimeModel:
        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{folder}: not a fit folder ({CONFIG_FILE}: {err})") from None
        version = config.get("format_version")
        if version != FORMAT_VERSION and not (version == 1 and not _has_regime(config)):
            raise ValueError(
                f"{folder}: unsupported fit format {version} (this steptime reads "
                f"{FORMAT_VERSION}, and 1 for fits without a scheduler regime: refit)"
            )
        hardware_name = config["hardware"]["name"]
        model = cls(
            target=config["target"],
            basis_names=tuple(config["basis_names"]),
            host_basis_names=config.get("host_basis_names"),
            priors=PriorConfig.from_dict(config["priors"]),
            hardware=hardware_name,
            model_config_dirs=tuple(config.get("model_config_dirs", ())),
            specs_={name: ModelSpec(**spec) for name, spec in config["model_specs"].items()},
        )
        model.idata_ = az.from_netcdf(folder / POSTERIOR_FILE)
        return model


def _has_regime(config: dict) -> bool:
    """Whether a saved fit's priors hold a scheduler regime (its own or its host's)."""
    priors = config.get("priors", {})
    return bool(priors.get("regime") or (priors.get("host") or {}).get("regime"))


def _draws_of(post: xr.Dataset, basis_names, priors: PriorConfig, prefix: str, basis_dim: str):
    """PosteriorDraws of one regression (the step time, or a fit's host sub-model)."""

    def values(name: str, *dims: str) -> np.ndarray:
        return post[prefix + name].transpose("sample", *dims).values

    coefficient_priors = priors.for_bases(basis_names)
    regime = priors.regime
    return PosteriorDraws(
        basis_names=tuple(basis_names),
        models=tuple(str(m) for m in post["model"].values),
        workloads=tuple(str(w) for w in post["workload"].values),
        log_beta_population=values("log_beta_population", basis_dim),
        a_moe=values("a_moe", basis_dim),
        log_beta=values("log_beta", "model", basis_dim),
        workload_effect=values("workload_effect", "workload"),
        sigma_floor=values("sigma_floor", "model"),
        sigma_step=values("sigma_step", "model"),
        nu=values("nu"),
        model_sd=np.array([p.model_sd for p in coefficient_priors]),
        moe_sd=np.array([p.moe_sd for p in coefficient_priors]),
        workload_sd=priors.noise.workload_sd,
        regime=None
        if regime is None
        else RegimeDraws(
            **{
                name: values(name, "model") if name in RegimeDraws.PER_MODEL else values(name)
                for name in RegimeDraws.PER_DRAW
            },
            **{name: getattr(regime, name) for name in RegimeDraws.HYPERPARAMETERS},
        ),
        stall=None
        if priors.stall is None or prefix + "stall_rate" not in post
        else StallDraws(
            rate=values("stall_rate"),
            log_jump=values("stall_log_jump"),
            spread=values("stall_spread"),
        ),
    )


def sample_nuts(
    pm_model,
    draws: int,
    tune: int,
    chains: int,
    seed: int,
    sampler: str = "nutpie",
    progressbar: bool = True,
    target_accept: float = 0.95,
    init: str = "map",
) -> az.InferenceData:
    """NUTS through nutpie (numba-compiled) or, as the fallback, PyMC's own sampler.

    ``init="laplace"`` samples in coordinates whitened at the posterior mode (see
    :mod:`inference.laplace`), ``"map"`` in the model's own coordinates shifted to the
    mode; every chain starts a small seeded offset from the mode.
    """
    if sampler == "nutpie" and importlib.util.find_spec("nutpie") is None:
        print("nutpie is not installed; falling back to PyMC's NUTS", file=sys.stderr)
        sampler = "pymc"
    if sampler not in ("nutpie", "pymc"):
        raise ValueError(f"unknown sampler {sampler!r}; use 'nutpie' or 'pymc'")
    if init not in ("laplace", "map", "support_point"):
        raise ValueError(f"unknown init {init!r}; use 'laplace', 'map' or 'support_point'")
    if init in ("laplace", "map"):
        started = time.perf_counter()
        frame = laplace_frame(pm_model, seed, progressbar, curvature=init == "laplace")
        laplace_seconds = time.perf_counter() - started
        idata = _run_sampler(
            whitened_model(pm_model, frame),
            draws,
            tune,
            chains,
            seed,
            sampler,
            progressbar,
            target_accept,
            jitter=START_JITTER,
        )
        idata = drop_whitened(idata)
        idata.posterior.attrs["laplace_condition_number"] = frame.condition_number
        idata.posterior.attrs["laplace_seconds"] = round(laplace_seconds, 2)
        return idata
    return _run_sampler(
        pm_model, draws, tune, chains, seed, sampler, progressbar, target_accept, jitter=None
    )


def _run_sampler(
    pm_model, draws, tune, chains, seed, sampler, progressbar, target_accept, jitter
) -> az.InferenceData:
    """``jitter``: the sd of each chain's seeded offset from the model's initial point, or
    None for the sampler's own jitter around the priors' centres."""
    if sampler == "nutpie":
        import nutpie

        if jitter is None:
            compiled = nutpie.compile_pymc_model(pm_model)
        else:
            compiled = nutpie.compile_pymc_model(pm_model, jitter_rvs=set())
            compiled = replace(
                compiled, initial_point_func=starts_near(compiled.initial_point_func, jitter)
            )
        return nutpie.sample(
            compiled,
            draws=draws,
            tune=tune,
            chains=chains,
            seed=seed,
            progress_bar=progressbar,
            cores=min(chains, 2),
            low_rank_modified_mass_matrix=True,
            target_accept=target_accept,
        )
    import pymc as pm

    with pm_model:
        return pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            cores=min(chains, 2),
            random_seed=seed,
            progressbar=progressbar,
            init="jitter+adapt_diag" if jitter is None else "adapt_diag",  # PyMC's jitter is ±1
            initvals=None if jitter is None else pm_model.initial_point(),
            target_accept=target_accept,
        )


START_JITTER = 0.05  # sd of each chain's offset from the mode, in the sampler's units


def starts_near(
    initial_point_func: Callable[[int], np.ndarray], scale: float
) -> Callable[[int], np.ndarray]:
    """Seeded small Gaussian offsets around a fixed start: nutpie refuses chains that all
    start at one identical point ("All initialization points failed")."""

    def offset_start(seed: int) -> np.ndarray:
        start = initial_point_func(seed)
        return start + scale * np.random.default_rng(seed).standard_normal(start.shape)

    return offset_start
