"""Numpy-only step-time sampler for simulators, loaded from a steptime artifact.

    sampler = StepTimeSampler.load("steptime.json")
    sampler.predict({"decode_reqs": 32, "kv_tokens": 20000}, model="llama-2-70b", tp=4)
    sampler.point(features_of_many_steps, model="llama-2-70b", tp=4)      # fast, vectorised
    sampler.sample(batch, 1000, rng, model="llama-2-70b", tp=4)         # predictive draws
    run = sampler.run_draw(rng, model="llama-2-70b", tp=4, workload="general")
    run.step_time_fn(twin_features)                                      # one simulated run

Importing this module imports numpy and the repository's pure-numpy modules only (never
PyMC, PyTensor, ArviZ or pandas). The posterior predictive is the one of
:mod:`inference.predictive` — the same functions the PyMC-side estimator uses — on the
artifact's draws:

    y = exp(ω_w,d) · Σ_k β_{k,m,d} · basis_k(step) · exp(σ_d · t),   t ~ StudentT(ν_d)
    σ_d = sqrt(σ_floor,m,d² + σ_step,m,d² / gap)  (gap = 1 for one simulated step)

A ``schedule`` artifact with a ``regime`` section (the scheduler's slow regime) mixes in
slow steps: P(slow) = p_max_m,d · sigmoid((running_reqs − threshold_m,d) / width_d), and a
slow step's time is the fast noise-free time times
exp(jump_m,d) · (running_reqs / threshold_m,d)^growth_m,d with log-noise scale
slow_sigma_m,d instead of σ_d (:class:`inference.predictive.ModelRegime`; an unseen model
draws its regime through the hyperprior with
:meth:`~inference.predictive.RegimeDraws.for_model`). Every path below includes it.

A ``cycle`` artifact with a ``host`` section (a ``--host-bound`` fit) carries the
scheduler's regression as a nested ``schedule`` artifact: every path draws the step's
scheduler time from it as above and the step lasts
:func:`models.basis.host_bound_step_us` of the GPU time and that scheduler time, before
the cycle's own noise. The two regressions' posteriors are independent (their likelihoods
share no parameter), so their draws are combined independently.

A model seen in the fit uses its own β draws; an unseen one (given by a config.json and
TP) draws them through the hyperprior (population + MoE offset + model_sd · z), a
workload the fit never saw draws ω from N(0, workload_sd). Those hyperprior draws are
made once per (model, TP, workload) with a seed derived from the names, so predictions
are deterministic.

Two separate knobs of uncertainty (see :meth:`StepTimeSampler.sample` and
:meth:`StepTimeSampler.run_draw`): ``parameter_uncertainty`` (a posterior draw — one per
simulated run — versus the central parameters) and ``step_noise`` (per-step jitter).
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.specs import (
    KV_BLOCK_TOKENS,
    HardwareSpec,
    ModelSpec,
    canonical_model_name,
    get_model_spec,
    load_model_spec,
)
from inference.export import load_artifact, posterior_draws, validate_artifact
from inference.predictive import (
    ModelRegime,
    PosteriorDraws,
    StallDraws,
    coefficient_draws,
    design_predictive,
    mape_optimal_point,
    noise_draws,
    summarize_predictive,
    workload_draws,
)
from models import basis as _basis
from models.basis import BASIS_SET_VERSION, BatchFeatures, evaluate_bases, host_bound_step_us

DEFAULT_QUANTILES = (0.05, 0.5, 0.95)
PREDICT_SAMPLES = 1024  # at least this many fixed samples (R per draw) behind predict()
PREDICT_NOISE_WINSOR = 0.99  # |t| quantile at which predict()'s fixed noise set is clipped
RUN_NOISE_POOL = 1 << 16  # per-run pool of per-step noise multipliers
RUN_NOISE_WINSOR = 0.99  # |t| quantile at which a simulated run's per-step noise is clipped
UNSEEN_MODEL = "<unseen model>"
UNSEEN_WORKLOAD = "<unseen workload>"
_FEATURES = tuple(f.name for f in fields(BatchFeatures))


# --- one step as Python floats: the hot path of a simulator ------------------------------


def scalar_features(values: Mapping[str, Any]) -> tuple[float, ...]:
    """One step's features as floats in :class:`BatchFeatures` field order.

    Accepts feature names (``decode_reqs``) or step-dataset / twin column names
    (``batch.num_decode_reqs``); defaults as in :meth:`BatchFeatures.from_mapping`.
    """
    get = values.get
    out = []
    for name in _FEATURES:
        v = get(name)
        if v is None:
            v = get(BatchFeatures.COLUMNS[name])
        out.append(None if v is None else float(v))
    decode_reqs, prefill_reqs, prefill_tokens = (v or 0.0 for v in out[:3])
    decode_tokens = decode_reqs if out[3] is None else out[3]
    kv, running, waiting, new_blocks = out[4:]
    if running is None:
        running = decode_reqs + prefill_reqs
    if new_blocks is None:
        new_blocks = (prefill_tokens + decode_tokens) / KV_BLOCK_TOKENS
    return (
        decode_reqs,
        prefill_reqs,
        prefill_tokens,
        decode_tokens,
        kv or 0.0,
        running,
        waiting or 0.0,
        new_blocks,
    )


def _fast_basis_factories(spec: ModelSpec, hw: HardwareSpec, tp: int) -> dict[str, Callable]:
    """Scalar re-implementations of :data:`models.basis.BASIS_FUNCTIONS` for one context.

    Each takes the tuple of :func:`scalar_features`. They are checked against
    ``evaluate_bases`` whenever a context is built and dropped when they disagree, so a
    basis whose formula changes under the same name falls back to the numpy version.
    """
    b = _basis
    hbm, flops_us, nvlink = hw.hbm_bytes_per_us, hw.flops_per_us, hw.nvlink_bytes_per_us
    e, k = spec.num_experts, spec.experts_per_token
    moe = spec.is_moe
    per_layer_w = spec.attention_params_per_layer
    w_fixed = (spec.num_layers * per_layer_w + spec.embedding_params / 2) * spec.dtype_bytes / tp
    w_expert = spec.num_layers * spec.expert_params * spec.dtype_bytes / tp

    def weights(f):
        t = f[2] + f[3]
        experts = e * (1.0 - ((e - k) / e) ** max(t, 0.0)) if moe else 1.0
        return (w_fixed + w_expert * experts) / hbm

    per_layer = spec.attention_params_per_layer + k * spec.expert_params
    lin_tok = 2.0 * spec.num_layers * per_layer
    lin_row = 2.0 * spec.vocab_size * spec.hidden_size

    def linear_flops(f):
        return (lin_tok * (f[2] + f[3]) + lin_row * (f[0] + f[1])) / tp / flops_us

    def linear_compute(f):
        c = linear_flops(f) / b.NOMINAL_GEMM_MFU
        return max(0.0, c - weights(f) / b.NOMINAL_HBM_EFFICIENCY)

    def roofline_knee(f):
        w, c = weights(f) / b.NOMINAL_HBM_EFFICIENCY, linear_flops(f) / b.NOMINAL_GEMM_MFU
        return math.hypot(w, c) - max(w, c)

    attn = 4.0 * spec.num_heads * spec.head_dim * spec.num_layers / tp / flops_us

    def prefill_attention(f):
        return attn * f[2] * (f[4] / max(f[5], 1.0) + f[2] / (2.0 * max(f[1], 1.0)))

    kv_per_token = spec.kv_bytes_per_token(tp) / hbm

    def kv_read(f):
        return kv_per_token * f[4]

    ar = 2 * spec.num_layers * spec.hidden_size * spec.dtype_bytes * 2.0 * (tp - 1) / tp / nvlink

    def allreduce_bw(f):
        return ar * (f[2] + f[3]) if tp > 1 else 0.0

    sync = spec.num_layers * (b.NOMINAL_LAYER_LAUNCH_US + b.allreduce_latency_per_layer_us(tp))
    step = b.NOMINAL_STEP_OVERHEAD_US

    def static_step(f):
        return weights(f) / b.NOMINAL_HBM_EFFICIENCY + sync + step

    return {
        "weights": weights,
        "linear_compute": linear_compute,
        "roofline_knee": roofline_knee,
        "prefill_attention": prefill_attention,
        "kv_read": kv_read,
        "allreduce_bw": allreduce_bw,
        "layer_sync": lambda f: sync,
        "request_overhead": lambda f: (f[0] + f[1]) * b.NOMINAL_REQUEST_OVERHEAD_US,
        "prefill_admission": lambda f: f[1] * b.NOMINAL_PREFILL_ADMISSION_US,
        "step_overhead": lambda f: step,
        "static_step": static_step,
        "sched_fixed": lambda f: b.NOMINAL_SCHED_STEP_US,
        "sched_running": lambda f: f[5] * b.NOMINAL_SCHED_REQUEST_US,
        "sched_waiting": lambda f: f[6] * b.NOMINAL_SCHED_REQUEST_US,
        "sched_tokens": lambda f: (f[2] + f[3]) * b.NOMINAL_SCHED_TOKEN_US,
        "sched_new_requests": lambda f: f[1] * b.NOMINAL_SCHED_ADMIT_US,
        "sched_cache_misses": lambda f: min(f[1], max(f[2] - f[1], 0.0)) * b.NOMINAL_SCHED_ADMIT_US,
        "sched_kv_blocks": lambda f: f[7] * b.NOMINAL_SCHED_BLOCK_US,
        "sched_prefix_hash": lambda f: f[2] * b.NOMINAL_SCHED_HASH_US_PER_TOKEN,
    }


def probe_features(n: int = 256, seed: int = 12345) -> BatchFeatures:
    """Typical and edge-case steps (decode-only, prefill chunks, empty) for checks."""
    rng = np.random.default_rng(seed)
    decode = rng.integers(0, 129, n).astype(float)
    prefill_reqs = rng.integers(0, 4, n).astype(float) * (rng.random(n) < 0.4)
    prefill = np.where(prefill_reqs > 0, rng.integers(1, 2049, n), 0).astype(float)
    decode[:4] = (0, 1, 0, 128)
    prefill_reqs[:4] = (0, 0, 1, 2)
    prefill[:4] = (0, 0, 7, 2048)
    return BatchFeatures.from_mapping(
        {
            "decode_reqs": decode,
            "prefill_reqs": prefill_reqs,
            "prefill_tokens": prefill,
            "decode_tokens": decode,
            # resident KV is what the running requests hold: up to 4,096 tokens each
            "kv_tokens": (decode + prefill_reqs) * rng.integers(0, 4097, n),
            "waiting_reqs": rng.integers(0, 50, n).astype(float),
        }
    )


# --- per-(model, TP, workload) cached state ---------------------------------------------


@dataclass
class RegimeContext:
    """The slow regime of one (model, TP, workload): per-draw parameters and fixed samples."""

    draws: ModelRegime  # (draw,) per parameter
    central: ModelRegime  # one draw of central parameters (parameter_uncertainty=False)
    eps_slow: np.ndarray  # (R, draw) exp(slow_sigma·t), predict()'s clipped t
    uniform: np.ndarray  # (R, draw) fixed uniforms: sample (r, d) is slow when u < P(slow)

    def p_slow(self, running: np.ndarray) -> np.ndarray:
        """(steps, draw) P(slow) of steps with the given running-queue depths."""
        return self.draws.p_slow(running[:, None])

    def jump_factor(self, running: np.ndarray) -> np.ndarray:
        """(steps, draw) slow / fast time ratio of those steps."""
        return np.exp(self.draws.log_jump(running[:, None]))


@dataclass
class Context:
    """Everything one (model, TP, workload) needs, precomputed from the draws."""

    model: str
    spec: ModelSpec
    tp: int
    architecture: str
    seen_model: bool
    workload: str
    seen_workload: bool
    beta: np.ndarray  # (draw, basis): exp(log β + ω), the workload effect folded in
    sigma: np.ndarray  # (draw,) noise scale of one step (gap = 1)
    nu: np.ndarray  # (draw,)
    eps: np.ndarray  # (R, draw) fixed noise multipliers exp(σ_d t) behind predict()
    beta_central: np.ndarray  # (basis,) exp(mean over draws of log β + ω)
    sigma_central: float
    nu_central: float
    beta_point: np.ndarray  # (basis,) effective coefficients of the fast point()
    fast_bases: list[Callable] | None  # scalar basis functions (None: numpy path)
    hardware: HardwareSpec
    basis_names: tuple[str, ...]
    regime: RegimeContext | None = None  # the scheduler's slow regime, when the fit has one
    stall: StallDraws | None = None  # rare stalls (cycle fits); eps already includes them
    stall_central: StallDraws | None = None  # the same at the central parameters
    host: Context | None = None  # the scheduler's context of a host-bound cycle artifact

    def bases(self, x: BatchFeatures) -> np.ndarray:
        """(steps, basis) basis matrix by the reference numpy functions."""
        return evaluate_bases(self.basis_names, x, self.spec, self.hardware, self.tp)

    def step_bases(self, features: tuple[float, ...]) -> np.ndarray:
        """(basis,) for one step given as :func:`scalar_features`."""
        if self.fast_bases is not None:
            return np.array([fn(features) for fn in self.fast_bases])
        x = BatchFeatures(*(np.array([v]) for v in features))
        return self.bases(x)[0]


@dataclass(frozen=True)
class Bases:
    """Basis rows of a batch: the artifact's own and, for a host-bound one, the scheduler's."""

    own: np.ndarray  # (steps, basis)
    host: np.ndarray | None = None  # (steps, host basis)

    def rows(self, index: slice) -> Bases:
        return Bases(self.own[index], None if self.host is None else self.host[index])


def _stable_seed(*parts: object) -> int:
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


def _order_stats(sorted_samples: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """``np.quantile`` (linear) of rows already sorted along the last axis."""
    n = sorted_samples.shape[-1]
    pos = quantiles * (n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    a = sorted_samples[..., lo]
    return a + (sorted_samples[..., hi] - a) * frac


def _point(samples: np.ndarray) -> np.ndarray:
    """MAPE-optimal point of each row; the noise is already clipped, so no winsorising."""
    return mape_optimal_point(samples, axis=-1, winsor=0.0)


class StepTimeSampler:
    """Posterior-predictive step times from an artifact; numpy only, side-effect free."""

    def __init__(self, artifact: dict, *, source: str = "artifact") -> None:
        self.artifact = validate_artifact(artifact, source)
        if artifact["basis_set_version"] != BASIS_SET_VERSION:
            warnings.warn(
                f"{source}: basis set version {artifact['basis_set_version']!r} differs "
                f"from this code's {BASIS_SET_VERSION!r}; predictions may be off",
                stacklevel=2,
            )
        unknown = [n for n in artifact["basis_names"] if n not in _basis.BASIS_FUNCTIONS]
        if unknown:
            raise ValueError(f"{source}: bases {unknown} are not defined in this version")
        self.target: str = artifact["target"]
        self.basis_names: tuple[str, ...] = tuple(artifact["basis_names"])
        self.draws: PosteriorDraws = posterior_draws(artifact)
        self.host: StepTimeSampler | None = None
        if artifact.get("host") is not None:
            self.host = StepTimeSampler(artifact["host"], source=f"{source} host")
            self.draws = replace(self.draws, host=self.host.draws)
        self.hardware = HardwareSpec(
            **{k: artifact["hardware"][k] for k in HardwareSpec.__dataclass_fields__}
        )
        self.model_specs = {
            name: ModelSpec(**spec) for name, spec in artifact["model_specs"].items()
        }
        self.seed = int(artifact.get("provenance", {}).get("thin_seed", 0))
        self._contexts: dict[tuple, Context] = {}
        self._quantile_plans: dict[tuple, tuple] = {}

    @classmethod
    def load(cls, path: str | Path) -> StepTimeSampler:
        return cls(load_artifact(path), source=str(path))

    @property
    def models(self) -> tuple[str, ...]:
        """Models seen in the fit."""
        return self.draws.models

    @property
    def workloads(self) -> tuple[str, ...]:
        """Workloads seen in the fit."""
        return self.draws.workloads

    # --- contexts -----------------------------------------------------------------------

    def resolve_model(
        self, model: str | ModelSpec | None = None, model_config: str | Path | None = None
    ) -> ModelSpec:
        """A spec from a fitted name, a shipped name, a config.json path or a ModelSpec."""
        if model_config is not None:
            return load_model_spec(model_config)
        if isinstance(model, ModelSpec):
            return model
        if model is None:
            raise ValueError("give a model (a fitted name) or a model config (config.json)")
        name = canonical_model_name(str(model))
        if name in self.model_specs:
            return self.model_specs[name]
        try:
            return get_model_spec(str(model))
        except KeyError:
            raise KeyError(
                f"model {model!r} is not in the fit ({list(self.models)}) and has no shipped "
                "config; pass its config.json (model_config=...)"
            ) from None

    def context(
        self,
        model: str | ModelSpec | None = None,
        tp: int | None = None,
        workload: str | None = None,
        *,
        model_config: str | Path | None = None,
        as_unseen: bool = False,
    ) -> Context:
        """The cached per-(model, TP, workload) state; built on first use.

        ``workload=None`` (or a name the fit never saw) means an unseen workload, drawn from
        the workload prior; ``as_unseen=True`` predicts a fitted model through the
        hyperprior as if the fit had not seen it.
        """
        spec = self.resolve_model(model, model_config)
        if tp is None or int(tp) < 1:
            raise ValueError("give the tensor-parallel degree (tp ≥ 1)")
        key = (spec, int(tp), workload, bool(as_unseen))
        cached = self._contexts.get(key)
        if cached is None:
            cached = self._contexts[key] = self._build_context(spec, int(tp), workload, as_unseen)
        return cached

    def _build_context(
        self, spec: ModelSpec, tp: int, workload: str | None, as_unseen: bool
    ) -> Context:
        draws = self.draws
        seen = spec.name in draws.models and not as_unseen
        key = spec.name if seen else f"{UNSEEN_MODEL}:{spec.name}"
        seen_workload = workload in draws.workloads
        wkey = workload if seen_workload else UNSEEN_WORKLOAD
        if seen:
            architecture = self.artifact["groups"]["model_architectures"][
                draws.models.index(spec.name)
            ]
        else:
            architecture = spec.architecture
        rng = np.random.default_rng([self.seed, _stable_seed(key, wkey, tp)])
        # same order of rng use as inference.predictive.log_mean_draws
        log_beta = coefficient_draws(draws, key, architecture, rng)
        effect = workload_draws(draws, wkey, rng)
        floor, step = noise_draws(draws, key)
        regime_draws = None if draws.regime is None else draws.regime.for_model(draws, key, rng)
        log_total = log_beta + effect[:, None]
        beta = np.exp(log_total)
        sigma = np.sqrt(floor**2 + step**2)
        replicates = max(2, -(-PREDICT_SAMPLES // draws.n_draws))
        t = rng.standard_t(draws.nu[None, :], size=(replicates, draws.n_draws))
        bound = np.quantile(np.abs(t), PREDICT_NOISE_WINSOR)
        t = np.clip(t, -bound, bound)
        regime = None
        if regime_draws is not None:
            regime = RegimeContext(
                draws=regime_draws,
                central=regime_draws.central(),
                # the same t as the fast samples, as inference.predictive.predictive_draws
                eps_slow=np.exp(regime_draws.slow_sigma[None, :] * t),
                uniform=rng.random(t.shape),
            )
        eps = np.exp(sigma[None, :] * t)
        if draws.stall is not None:
            stall_multiplier = draws.stall.multipliers(rng, t.shape)
            eps *= stall_multiplier
            if regime is not None:
                regime.eps_slow *= stall_multiplier
        context = Context(
            model=spec.name,
            spec=spec,
            tp=tp,
            architecture=architecture,
            seen_model=seen,
            workload=wkey,
            seen_workload=seen_workload,
            beta=beta,
            sigma=sigma,
            nu=draws.nu.copy(),
            eps=eps,
            beta_central=np.exp(log_total.mean(axis=0)),
            sigma_central=float(np.median(sigma)),
            nu_central=float(np.median(draws.nu)),
            beta_point=beta.mean(axis=0),
            fast_bases=None,
            hardware=self.hardware,
            basis_names=self.basis_names,
            regime=regime,
            stall=draws.stall,
            stall_central=None
            if draws.stall is None
            else StallDraws(
                *(np.array([np.median(getattr(draws.stall, n))]) for n in StallDraws.PER_DRAW)
            ),
        )
        context.fast_bases = self._checked_fast_bases(context)
        if self.host is not None:
            context.host = self.host.context(spec, tp, workload, as_unseen=as_unseen)
        if regime is not None or context.host is not None:
            return context  # point() is the exact one: neither is linear in the bases
        # effective coefficients of the fast point: relative least squares of the exact
        # MAPE-optimal point on probe steps (starting from the posterior mean)
        x = probe_features()
        probes = context.bases(x)
        exact = _point(self._samples(context, Bases(probes), x.running_reqs))
        scaled = probes / exact[:, None]
        fitted, *_ = np.linalg.lstsq(scaled, np.ones(len(exact)), rcond=None)
        if np.all(np.isfinite(fitted)) and np.median(np.abs(scaled @ fitted - 1)) < np.median(
            np.abs(scaled @ context.beta_point - 1)
        ):
            context.beta_point = fitted
        return context

    def _checked_fast_bases(self, context: Context) -> list[Callable] | None:
        factories = _fast_basis_factories(context.spec, self.hardware, context.tp)
        if any(name not in factories for name in self.basis_names):
            return None
        fns = [factories[name] for name in self.basis_names]
        x = probe_features()
        reference = context.bases(x)
        rows = np.column_stack([getattr(x, f) for f in _FEATURES])
        fast = np.array([[fn(tuple(r)) for fn in fns] for r in rows.tolist()])
        if not np.allclose(fast, reference, rtol=1e-9, atol=1e-9):
            warnings.warn(
                "scalar basis fast path disagrees with models.basis; using numpy",
                stacklevel=3,
            )
            return None
        return fns

    # --- batches --------------------------------------------------------------------------

    @staticmethod
    def _is_single(batch: Any) -> bool:
        if isinstance(batch, BatchFeatures):
            return False
        return all(np.ndim(v) == 0 for v in batch.values())

    def _batch_bases(self, context: Context, batch: Any) -> tuple[Bases, np.ndarray, bool]:
        """(steps, basis) bases — with the scheduler's for a host-bound artifact — (steps,)
        running requests, and whether the batch was one step given as scalars."""
        if isinstance(batch, BatchFeatures):
            x, single = batch, False
        elif self._is_single(batch):
            f = scalar_features(batch)
            host = None if context.host is None else context.host.step_bases(f)[None, :]
            return Bases(context.step_bases(f)[None, :], host), np.array([f[5]]), True
        else:
            x, single = BatchFeatures.from_mapping(batch), False
        host = None if context.host is None else context.host.bases(x)
        return Bases(context.bases(x), host), x.running_reqs, single

    def _samples(self, context: Context, bases: Bases, running: np.ndarray) -> np.ndarray:
        """(steps, R·draw) fixed predictive samples of each row."""
        mean = bases.own @ context.beta.T  # (steps, draw)
        regime = context.regime
        if regime is None:
            noise = context.eps[None, :, :]
        else:
            slow = regime.uniform[None, :, :] < regime.p_slow(running)[:, None, :]
            eps_slow = regime.eps_slow[None, :, :] * regime.jump_factor(running)[:, None, :]
            noise = np.where(slow, eps_slow, context.eps[None, :, :])
        steps = mean.shape[0]
        mean = mean[:, None, :]
        if context.host is not None:
            host = self.host._samples(context.host, Bases(bases.host), running)
            mean = host_bound_step_us(mean, host.reshape(steps, *context.eps.shape))
        return (mean * noise).reshape(steps, -1)

    def _summaries(
        self, ctx: Context, bases: Bases, running: np.ndarray, qs: np.ndarray, chunk: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(point, mean, quantiles (steps, q)) of the fixed samples, ``chunk`` rows at a time."""
        parts = []
        for start in range(0, bases.own.shape[0], chunk):
            rows = slice(start, start + chunk)
            s = np.sort(self._samples(ctx, bases.rows(rows), running[rows]), axis=-1)
            parts.append((_point(s), s.mean(axis=-1), _order_stats(s, qs)))
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))

    # --- public API -----------------------------------------------------------------------

    def predict(
        self,
        batch: Mapping[str, Any] | BatchFeatures,
        model: str | ModelSpec | None = None,
        tp: int | None = None,
        workload: str | None = None,
        *,
        quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
        model_config: str | Path | None = None,
        as_unseen: bool = False,
        chunk: int = 2048,
    ) -> dict[str, Any]:
        """MAPE-optimal point, mean and quantiles (µs) of the posterior predictive.

        ``batch``: feature names (or dataset columns) to scalars for one step — values
        are then floats — or to arrays for many steps — values are arrays. Keys:
        ``point_us`` (the 1/y-weighted median, :func:`mape_optimal_point`), ``mean_us``,
        ``median_us`` and ``q{q:g}`` per quantile. The predictive is represented by a
        fixed set of R × draws ≥ 1024 samples per step (deterministic) whose
        Student-t noise is clipped at the 99th percentile of |t|: the quantiles inside
        0.5%–99.5% are those of the unclipped set, but a log-Student-t has neither a
        finite mean nor a finite E[1/y], so without the clip one extreme draw would
        decide ``mean_us`` and ``point_us`` (with ν near 1 the point collapses to ~0).
        :meth:`predict_frame` is the estimator's exact, unclipped predictive.
        """
        ctx = self.context(model, tp, workload, model_config=model_config, as_unseen=as_unseen)
        if ctx.host is None and not isinstance(batch, BatchFeatures) and self._is_single(batch):
            f = scalar_features(batch)
            return self._predict_one(ctx, ctx.step_bases(f), f[5], quantiles)
        bases, running, single = self._batch_bases(ctx, batch)
        qs = np.asarray(quantiles, dtype=float)
        point, mean, qv = self._summaries(ctx, bases, running, np.append(qs, 0.5), chunk)
        out: dict[str, Any] = {"point_us": point, "mean_us": mean, "median_us": qv[:, -1]}
        for i, q in enumerate(qs):
            out[f"q{q:g}"] = qv[:, i]
        if single:
            out = {k: float(v[0]) for k, v in out.items()}
        return out

    def _predict_one(
        self, ctx: Context, bases: np.ndarray, running: float, quantiles: tuple[float, ...]
    ) -> dict[str, float]:
        """:meth:`predict` of one step, without the 2-D bookkeeping (the hot path).

        The point is :func:`mape_optimal_point` (no winsorising) written out for one
        sorted vector; a test checks it against the batch path, which calls it.
        """
        regime = ctx.regime
        if regime is None:
            noise = ctx.eps
        else:
            eps_slow = regime.eps_slow * np.exp(regime.draws.log_jump(running))
            noise = np.where(regime.uniform < regime.draws.p_slow(running), eps_slow, ctx.eps)
        samples = (noise * (ctx.beta @ bases)).ravel()
        samples.sort()
        n = samples.shape[0]
        key = (n, tuple(quantiles))
        plan = self._quantile_plans.get(key)
        if plan is None:
            pos = np.asarray((*quantiles, 0.5), dtype=float) * (n - 1)
            lo = np.floor(pos).astype(int)
            plan = self._quantile_plans[key] = (lo, np.minimum(lo + 1, n - 1), pos - lo)
        lo, hi, frac = plan
        low = samples[lo]
        values = (low + (samples[hi] - low) * frac).tolist()
        cumulative = np.cumsum(np.reciprocal(samples))
        point = samples[np.searchsorted(cumulative, cumulative[-1] * 0.5)]
        out = {
            "point_us": float(point),
            "mean_us": float(np.add.reduce(samples)) / n,
            "median_us": values[-1],
        }
        for q, v in zip(quantiles, values, strict=False):
            out[f"q{q:g}"] = v
        return out

    def point(
        self,
        batch: Mapping[str, Any] | BatchFeatures,
        model: str | ModelSpec | None = None,
        tp: int | None = None,
        workload: str | None = None,
        *,
        model_config: str | Path | None = None,
        as_unseen: bool = False,
    ) -> np.ndarray | float:
        """Fast vectorised point prediction (µs): ``bases @ β̄ · c``.

        β̄ are effective coefficients fitted once per context by relative least squares
        to the exact MAPE-optimal point of :meth:`predict` on 256 fixed probe steps
        (:func:`probe_features`); the posterior mean of β (workload effect included) when
        that fits worse. An approximation: the exact point is not linear in the bases.
        Typically within 0.5% of the exact point for fitted models; looser for unseen
        models, whose hyperprior spread makes it depend more on the batch.

        An artifact with a scheduler ``regime`` has no such linear form (the point jumps
        with the running-queue depth), so there ``point()`` is exactly
        ``predict(...)["point_us"]`` — correct, but ~R·draws work per step, not one dot
        product.
        """
        ctx = self.context(model, tp, workload, model_config=model_config, as_unseen=as_unseen)
        bases, running, single = self._batch_bases(ctx, batch)
        if ctx.regime is not None or ctx.host is not None:
            out = self._summaries(ctx, bases, running, np.empty(0), 2048)[0]
        else:
            out = bases.own @ ctx.beta_point
        return float(out[0]) if single else out

    def sample(
        self,
        batch: Mapping[str, Any] | BatchFeatures,
        n: int,
        rng: np.random.Generator,
        model: str | ModelSpec | None = None,
        tp: int | None = None,
        workload: str | None = None,
        *,
        parameter_uncertainty: bool = True,
        step_noise: bool = True,
        model_config: str | Path | None = None,
        as_unseen: bool = False,
    ) -> np.ndarray:
        """``n`` predictive draws (µs): shape (n,) for one step, (n, steps) for arrays.

        ``parameter_uncertainty``: each draw takes a random posterior draw (with
        replacement); off, every draw uses the central parameters (exp of the posterior
        mean of log β, median σ and ν). ``step_noise``: the Student-t noise of one step
        (gap = 1); off, draws are noise-free means. Both on is the predictive of
        :func:`inference.predictive.predictive_draws` with gap 1.

        With a scheduler ``regime`` the slow/fast choice of a step is step noise: with
        ``step_noise`` each draw is slow with probability P(slow) and then takes
        exp(g + slow_sigma·t) instead of exp(σ·t), with g the log slow/fast ratio at the
        step's running-queue depth (:func:`inference.predictive.slow_log_jump`); without it
        the draw is the regime-weighted noise-free mean, mean · (1 + P(slow)·(exp(g) − 1)).
        """
        ctx = self.context(model, tp, workload, model_config=model_config, as_unseen=as_unseen)
        bases, running, single = self._batch_bases(ctx, batch)
        out = self._sample_context(ctx, bases, running, n, rng, parameter_uncertainty, step_noise)
        return out[:, 0] if single else out

    def _sample_context(
        self,
        ctx: Context,
        all_bases: Bases,
        running: np.ndarray,
        n: int,
        rng: np.random.Generator,
        parameter_uncertainty: bool,
        step_noise: bool,
    ) -> np.ndarray:
        """:meth:`sample` for one context's bases: (n, steps)."""
        bases = all_bases.own
        regime = ctx.regime
        if parameter_uncertainty:
            index = rng.integers(0, ctx.beta.shape[0], size=n)
            mean = ctx.beta[index] @ bases.T  # (n, steps)
            sigma, nu = ctx.sigma[index, None], ctx.nu[index, None]
            if regime is not None:
                step_regime = regime.draws.take(index)
        else:
            mean = np.broadcast_to(bases @ ctx.beta_central, (n, bases.shape[0])).copy()
            sigma, nu = ctx.sigma_central, ctx.nu_central
            if regime is not None:
                step_regime = regime.central
        if ctx.host is not None:
            scheduler = self.host._sample_context(
                ctx.host, Bases(all_bases.host), running, n, rng, parameter_uncertainty, step_noise
            )
            mean = host_bound_step_us(mean, scheduler)
        stall = ctx.stall if parameter_uncertainty else ctx.stall_central
        if stall is not None:
            stall = stall.take(index) if parameter_uncertainty else stall
            if step_noise:
                mean *= StallDraws(
                    *(getattr(stall, n)[:, None] for n in StallDraws.PER_DRAW)
                ).multipliers(rng, mean.shape)
            else:
                mean *= stall.mean_multiplier()[:, None]
        if regime is None:
            if step_noise:
                mean *= np.exp(sigma * rng.standard_t(np.broadcast_to(nu, mean.shape)))
            return mean
        # (draw or 1, steps): the regime's parameters run along the first axis
        p_slow = np.broadcast_to(step_regime.p_slow(running[:, None]).T, mean.shape)
        log_jump = step_regime.log_jump(running[:, None]).T
        if step_noise:
            t = rng.standard_t(np.broadcast_to(nu, mean.shape))
            slow = rng.random(mean.shape) < p_slow
            slow_sigma = step_regime.slow_sigma[:, None]
            mean *= np.exp(np.where(slow, log_jump + slow_sigma * t, sigma * t))
        else:
            mean *= 1.0 + p_slow * np.expm1(log_jump)
        return mean

    def run_draw(
        self,
        rng: np.random.Generator,
        model: str | ModelSpec | None = None,
        tp: int | None = None,
        workload: str | None = None,
        *,
        parameter_uncertainty: bool = True,
        step_noise: bool = True,
        model_config: str | Path | None = None,
        as_unseen: bool = False,
    ) -> RunSampler:
        """Step times for one simulated run: one posterior draw fixed for the whole run."""
        ctx = self.context(model, tp, workload, model_config=model_config, as_unseen=as_unseen)
        return RunSampler(ctx, rng, parameter_uncertainty, step_noise)

    def predict_frame(
        self,
        steps,
        rows: np.ndarray | None = None,
        *,
        quantiles: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95),
        n_draws: int = 1000,
        seed: int = 0,
        specs: dict[str, ModelSpec] | None = None,
    ):
        """What :meth:`StepTimeModel.predict` returns, from the artifact (needs pandas).

        Builds the design with :func:`models.design.build_design` — cycle rows carry
        their gap and the composition of its untraced steps — and runs the same
        predictive with the same seed handling, so on the same draws the numbers are the
        estimator's.
        """
        from models.design import build_design

        all_specs = dict(self.model_specs)
        all_specs.update(specs or {})
        for name in set(steps["model"].unique()) - set(all_specs):
            all_specs[name] = get_model_spec(name)
        design = build_design(
            steps,
            self.target,
            self.basis_names,
            all_specs,
            self.hardware,
            rows=rows,
            host_basis_names=None if self.host is None else self.host.basis_names,
        )
        rng = np.random.default_rng(seed)
        draws = self.draws.thin(n_draws, rng)
        values = design_predictive(draws, design, rng)
        index = steps.index if rows is None else steps.index[np.asarray(rows, bool)]
        return summarize_predictive(values, index, quantiles)


class RunSampler:
    """Step times of one simulated run (one posterior draw; optional per-step noise).

    Per-step noise: the run draws a pool of 2^16 Student-t(ν_d) values, clips |t| at its
    99th percentile (ν near 2 would otherwise give steps of astronomical length), divides
    exp(σ_d t) by the pool mean (so the jitter alone does not inflate a run's time), and
    — for a fit with stalls — multiplies each pool entry by a stall multiplier J with
    probability rate_d; steps then draw from the pool at random. Stalls are what a
    run's mean time is most sensitive to: 0.1% of steps 5–30× longer is ~4% of the time,
    and every in-flight request waits through each one.

    With a scheduler ``regime`` a step is slow with probability
    p_max · sigmoid((running_reqs − threshold) / width) (the run's draw of each); a slow
    step takes exp(g) times a second pool, exp(slow_sigma t) divided by its mean, with g
    the log slow/fast ratio at its running-queue depth (:meth:`log_jump`). So the expected
    step time is mean · (1 + P(slow)·(exp(g) − 1)) · (1 + rate·(E[J] − 1)), which is what
    a step takes with ``step_noise`` off.
    """

    def __init__(
        self,
        context: Context,
        rng: np.random.Generator,
        parameter_uncertainty: bool = True,
        step_noise: bool = True,
    ) -> None:
        self.context = context
        self.rng = rng
        if parameter_uncertainty:
            self.draw = int(rng.integers(0, context.beta.shape[0]))
            self.beta = context.beta[self.draw]
            sigma, nu = float(context.sigma[self.draw]), float(context.nu[self.draw])
        else:
            self.draw = -1
            self.beta = context.beta_central
            sigma, nu = context.sigma_central, context.nu_central
        self.sigma, self.nu = sigma, nu
        regime = context.regime
        self.has_regime = regime is not None
        if regime is not None:
            run_regime = regime.draws.take([self.draw]) if parameter_uncertainty else regime.central
            self.threshold, self.jump, self.growth, self.slow_sigma, self.p_max, self.width = (
                float(getattr(run_regime, f.name)[0]) for f in fields(ModelRegime)
            )
        self._beta_list = self.beta.tolist()
        self.step_noise = step_noise
        stall = context.stall_central
        if context.stall is not None and parameter_uncertainty:
            stall = context.stall.take(np.array([self.draw]))
        self.stall_factor = 1.0 if stall is None else float(stall.mean_multiplier()[0])
        if step_noise:
            t = rng.standard_t(nu, size=RUN_NOISE_POOL)
            bound = np.quantile(np.abs(t), RUN_NOISE_WINSOR)
            t = np.clip(t, -bound, bound)
            stalls = 1.0 if stall is None else stall.multipliers(rng, (RUN_NOISE_POOL, 1))[:, 0]
            pool = np.exp(sigma * t)
            self._pool = (pool / pool.mean() * stalls).tolist()
            if self.has_regime:
                slow = np.exp(self.slow_sigma * t)
                self._slow_pool = (slow / slow.mean() * stalls).tolist()
        self._picks: list[int] = []
        self._uniforms: list[float] = []
        self.host = None  # the scheduler's run of a host-bound artifact: its own draw
        if context.host is not None:
            self.host = RunSampler(context.host, rng, parameter_uncertainty, step_noise)

    def p_slow(self, running_reqs: float) -> float:
        """P(slow step) at this running-queue depth (0 without a regime)."""
        if not self.has_regime:
            return 0.0
        z = 0.5 * (running_reqs - self.threshold) / self.width
        return self.p_max * 0.5 * (1.0 + math.tanh(z))

    def log_jump(self, running_reqs: float) -> float:
        """log(slow / fast time) at this running-queue depth."""
        ratio = max(running_reqs, 1.0) / max(self.threshold, 1.0)
        return self.jump + self.growth * math.log(ratio)

    def _uniform(self) -> float:
        if not self._uniforms:
            self._uniforms = self.rng.random(RUN_NOISE_POOL).tolist()
        return self._uniforms.pop()

    def _pick(self) -> int:
        if not self._picks:
            self._picks = self.rng.integers(0, RUN_NOISE_POOL, size=RUN_NOISE_POOL).tolist()
        return self._picks.pop()

    def _noise(self) -> float:
        return self._pool[self._pick()]

    def __call__(self, batch: Mapping[str, Any]) -> float:
        """One step's time (µs) for features given as a mapping of scalars."""
        ctx = self.context
        f = scalar_features(batch)
        if ctx.fast_bases is not None:
            mean = math.fsum(
                b * fn(f) for b, fn in zip(self._beta_list, ctx.fast_bases, strict=True)
            )
        else:
            mean = float(ctx.step_bases(f) @ self.beta)
        if self.host is not None:
            mean = host_bound_step_us(mean, self.host(batch))
        if not self.has_regime:
            return mean * self._noise() if self.step_noise else mean * self.stall_factor
        p_slow = self.p_slow(f[5])
        if not self.step_noise:
            return mean * (1.0 + p_slow * math.expm1(self.log_jump(f[5]))) * self.stall_factor
        if self._uniform() < p_slow:
            return mean * math.exp(self.log_jump(f[5])) * self._slow_pool[self._pick()]
        return mean * self._pool[self._pick()]

    def step_time_fn(self, features: Mapping[str, Any]) -> float:
        """Adapter for ``data_prep.synth.twin.simulate(step_time_fn=...)``: the step's
        time in µs (cycle time for a ``cycle`` artifact)."""
        return self(features)
