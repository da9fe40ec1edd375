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
    nu_mean: float = 5.0  # prior mean of the Student-t degrees of freedom (Gamma(2, 2/mean))
    workload_sd: float = 0.05  # fixed spread of the per-workload multiplicative effect


@dataclass(frozen=True)
class PriorConfig:
    coefficients: dict[str, CoefficientPrior] = field(default_factory=dict)
    noise: NoisePrior = NoisePrior()

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
        return cls(
            coefficients={k: CoefficientPrior(**v) for k, v in data["coefficients"].items()},
            noise=NoisePrior(**data["noise"]),
        )


DEFAULT_COEFFICIENT_PRIORS: dict[str, CoefficientPrior] = {
    # cycle: inverse hardware efficiencies
    "weights": CoefficientPrior(median=1.25, log_sd=0.25, model_sd=0.1),
    "linear_compute": CoefficientPrior(median=1.6, log_sd=0.5, model_sd=0.15),
    "prefill_attention": CoefficientPrior(median=2.0, log_sd=0.8, model_sd=0.2),
    "kv_read": CoefficientPrior(median=1.5, log_sd=0.6, model_sd=0.2),
    "allreduce_bw": CoefficientPrior(median=1.5, log_sd=0.6, model_sd=0.2),
    # cycle: fixed costs, multiples of their nominal values
    "layer_sync": CoefficientPrior(median=1.0, log_sd=0.8, model_sd=0.25),
    "request_overhead": CoefficientPrior(median=1.0, log_sd=0.8, model_sd=0.25),
    "step_overhead": CoefficientPrior(median=1.0, log_sd=0.8, model_sd=0.25),
    # scheduler CPU
    "sched_fixed": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_running": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_waiting": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_tokens": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_kv_blocks": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_prefix_hash": CoefficientPrior(median=1.0, log_sd=1.0, model_sd=0.3),
    "sched_large_batch": CoefficientPrior(median=1.0, log_sd=1.5, model_sd=0.5),
}

DEFAULT_PRIORS = PriorConfig(coefficients=DEFAULT_COEFFICIENT_PRIORS)
