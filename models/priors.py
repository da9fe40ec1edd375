"""Prior configuration of the hierarchical model, from physics.

A coefficient multiplies a basis that is already in µs at nominal efficiency, so its
prior median is an inverse efficiency (weights streamed at 80% of peak bandwidth → 1.25)
or an overhead multiplier (1 = the nominal overhead named in the basis docstring).
``log_sd`` is the prior uncertainty of the population coefficient (log scale);
``model_sd`` the fixed between-model spread, ``moe_sd`` the prior spread of the MoE offset.
Between-group scales are fixed, not learnt: two to four models cannot estimate them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

HOST_MODEL = "host"  # name (and variable prefix "host::") of a cycle fit's host sub-model


@dataclass(frozen=True)
class CoefficientPrior:
    median: float
    log_sd: float
    model_sd: float
    moe_sd: float = 0.3


@dataclass(frozen=True)
class NoisePrior:
    """Student-t noise on log(step time): floor per model, per-step part that averages out."""

    floor_sd: float = 0.05  # HalfNormal scale of the non-averaging misfit
    step_sd: float = 0.3  # HalfNormal scale of per-step jitter (divided by √gap)
    nu_mean: float = 5.0  # prior mean of ν − 2 for the Student-t (Gamma(2, 2/mean))
    workload_sd: float = 0.05  # fixed spread of the per-workload multiplicative effect


@dataclass(frozen=True)
class RegimePrior:
    """The scheduler's slow regime: above a per-model running-queue threshold most steps
    take several times longer (real traces: ~0.3 ms → 2–8 ms past 45–70 running requests),
    and a slow step grows faster with the queue than a fast one (real traces: the slow
    median triples from 72 to 96 running requests for CodeLlama-34B, where the fast one
    grows 14%).

    P(slow) = p_max_m · sigmoid((running − threshold_m) / width); a slow step's time is the
    fast one times exp(jump_m) · (running / threshold_m)^growth_m, with its own log-scale
    noise. p_max is per model (the real 70B runs ~97% slow at a full queue, the 34B ~85%)
    and pooled on the logit scale; ``width`` is learnt (the real switch is ~1 request wide).
    """

    threshold_mean: float = 64.0  # running requests
    threshold_sd: float = 24.0
    threshold_model_sd: float = 16.0  # fixed between-model spread
    width_median: float = 2.0  # steepness of the switch, in requests
    width_log_sd: float = 0.5
    jump_median: float = 10.0  # slow / fast time ratio at the threshold
    jump_log_sd: float = 1.0
    jump_model_sd: float = 0.3  # fixed between-model spread (log scale)
    growth_mean: float = 1.0  # exponent of the slow regime's extra growth with the queue
    growth_sd: float = 1.0
    growth_model_sd: float = 1.0  # fixed between-model spread (real traces: 0.6 and 2.6)
    p_max_median: float = 0.9  # share of slow steps far above the threshold
    p_max_logit_sd: float = 1.0
    p_max_model_sd: float = 0.5  # fixed between-model spread (logit scale)
    slow_sd: float = 0.5  # HalfNormal scale of the slow regime's log noise


@dataclass(frozen=True)
class StallPrior:
    """Rare engine stalls (allocator, NCCL or host hiccups) that make one step several
    times longer. A tenth of a percent of steps, yet a few percent of a run's time: every
    in-flight request waits. Shared by all models (too rare to learn per model).

    P(a step stalls) = rate ~ Beta(rate_alpha, rate_beta); a stalled step takes
    J times longer, log J ~ Normal(log_jump, spread) across stalls. The typical jump is
    kept large, log(J − 1) ~ Normal(log(jump_median − 1), jump_log_sd): with a loose
    prior the component also fits "2% of steps 12% slow" — a second role (skew of the
    ordinary noise) that chains switch between (R-hat 1.5 on the real traces).
    """

    rate_alpha: float = 1.0
    rate_beta: float = 199.0  # prior mean 0.5% of steps
    jump_median: float = 8.0  # prior median of the typical stalled / normal step time
    jump_log_sd: float = 0.5  # prior sd of log(J − 1)
    spread_sd: float = 0.3  # HalfNormal scale of the spread of log J across stalls


@dataclass(frozen=True)
class PriorConfig:
    """``cost_groups``: bases that every decode-only step sees in near-fixed proportion
    (resident KV, all-reduced tokens and requests all grow with the batch), so the data pin
    their summed cost per model and leave the split between them to the few prefill steps.
    The sampler sees such a group per model as its total cost at the model's mean row and
    the shares of it (see ``models.hierarchical.cost_group_log_beta``): the same prior
    and posterior, without the curved ridge in log β that NUTS crawls along and diverges
    at the ends of. Only groups whose bases are all in a fit's basis set apply.
    """

    coefficients: dict[str, CoefficientPrior] = field(default_factory=dict)
    noise: NoisePrior = NoisePrior()
    regime: RegimePrior | None = None
    stall: StallPrior | None = None
    # cycle fits only: priors of the scheduler regression that makes steps host-bound
    host: PriorConfig | None = None
    cost_groups: tuple[tuple[str, ...], ...] = ()

    def for_bases(self, names: tuple[str, ...] | list[str]) -> list[CoefficientPrior]:
        missing = [n for n in names if n not in self.coefficients]
        if missing:
            raise KeyError(f"no prior configured for bases {missing}")
        return [self.coefficients[n] for n in names]

    def with_coefficient(self, name: str, **changes: float) -> PriorConfig:
        updated = dict(self.coefficients)
        updated[name] = replace(updated[name], **changes)
        return replace(self, coefficients=updated)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PriorConfig:
        regime, stall, host = data.get("regime"), data.get("stall"), data.get("host")
        return cls(
            coefficients={k: CoefficientPrior(**v) for k, v in data["coefficients"].items()},
            noise=NoisePrior(**data["noise"]),
            regime=None if regime is None else RegimePrior(**regime),
            stall=None if stall is None else StallPrior(**stall),
            host=None if host is None else cls.from_dict(host),
            cost_groups=tuple(tuple(g) for g in data.get("cost_groups", ())),
        )

    def with_host(self) -> PriorConfig:
        """These priors plus the default scheduler regression for host-bound steps."""
        return replace(self, host=DEFAULT_PRIORS["schedule"])


DEFAULT_COEFFICIENT_PRIORS: dict[str, CoefficientPrior] = {
    # cycle: the composite constant of a step (1 = its nominal physics)
    "static_step": CoefficientPrior(median=1.0, log_sd=0.3, model_sd=0.1),
    # cycle: inverse hardware efficiencies
    "weights": CoefficientPrior(median=1.25, log_sd=0.25, model_sd=0.1),
    # 1 = GEMMs at the nominal MFU of models.basis; wide: the real traces run at 1.1–1.5
    "linear_compute": CoefficientPrior(median=1.0, log_sd=0.3, model_sd=0.1),
    # 0 = hard roofline knee, 1 = quadratic soft max; wide: real and synthetic differ
    "roofline_knee": CoefficientPrior(median=0.3, log_sd=1.2, model_sd=0.3),
    "prefill_attention": CoefficientPrior(median=2.0, log_sd=0.8, model_sd=0.2),
    "kv_read": CoefficientPrior(median=1.5, log_sd=0.6, model_sd=0.2),
    "allreduce_bw": CoefficientPrior(median=1.4, log_sd=0.3, model_sd=0.15),
    # cycle: fixed costs, multiples of their nominal values
    "layer_sync": CoefficientPrior(median=1.0, log_sd=0.8, model_sd=0.25),
    "request_overhead": CoefficientPrior(median=1.0, log_sd=0.8, model_sd=0.25),
    "prefill_admission": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "step_overhead": CoefficientPrior(median=1.0, log_sd=0.8, model_sd=0.25),
    # scheduler CPU
    "sched_fixed": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_running": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_waiting": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_tokens": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_new_requests": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_cache_misses": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_kv_blocks": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_prefix_hash": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
}

DEFAULT_PRIORS: dict[str, PriorConfig] = {
    "cycle": PriorConfig(
        coefficients=DEFAULT_COEFFICIENT_PRIORS,
        stall=StallPrior(),
        cost_groups=(("kv_read", "allreduce_bw", "request_overhead"),),
    ),
    "schedule": PriorConfig(coefficients=DEFAULT_COEFFICIENT_PRIORS, regime=RegimePrior()),
}
