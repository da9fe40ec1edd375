"""Workload profiles, vLLM configs, deployments and campaign presets of the synthetic twin.

The numbers here are *facts* about the 16 real H100 experiments (fixed prompt/output lengths,
constant-rate load stages, the shared vLLM config, KV block totals) written as constants, so
the synthetic campaign reproduces the real one without reading anything at run time.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, replace

from data_prep.specs import KV_BLOCK_TOKENS, ModelSpec

# -- workload profiles (inference-perf, constant load, ignore_eos) ---------------------------


@dataclass(frozen=True)
class Stage:
    rate_rps: float
    duration_s: float


@dataclass(frozen=True)
class Workload:
    """A fixed-length profile: prompts from 10 groups x 10 prompts sharing a system prompt."""

    name: str
    system_prompt_tokens: int
    question_tokens: int
    output_tokens: int
    prompt_tokens: int  # measured prompt length (system + question + chat template)
    stages: tuple[Stage, ...]
    num_groups: int = 10
    prompts_per_group: int = 10

    def scaled(self, time_scale: float) -> Workload:
        """Same rates, stage durations multiplied by ``time_scale``."""
        return replace(
            self, stages=tuple(Stage(s.rate_rps, s.duration_s * time_scale) for s in self.stages)
        )

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.stages)


WORKLOADS: dict[str, Workload] = {
    "general": Workload("general", 100, 447, 248, 575, (Stage(8, 600), Stage(20, 600))),
    "codegen": Workload("codegen", 100, 466, 247, 592, (Stage(5, 600), Stage(10, 600))),
    "roleplay": Workload("roleplay", 150, 600, 251, 785, (Stage(6, 1200),)),
    "reasoning": Workload("reasoning", 100, 934, 1448, 1080, (Stage(4, 1200),)),
}


# -- vLLM configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class VllmConfig:
    """Scheduler settings (the real campaign used the defaults below for all 16 runs)."""

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    max_model_len: int = 4096
    block_size: int = KV_BLOCK_TOKENS
    chunked_prefill: bool = True
    prefix_caching: bool = True

    @property
    def token_budget(self) -> int:
        """Per-step token budget; vLLM raises it to max_model_len without chunked prefill."""
        if self.chunked_prefill:
            return self.max_num_batched_tokens
        return max(self.max_num_batched_tokens, self.max_model_len)


DEFAULT_CONFIG = VllmConfig()

# -- deployments -------------------------------------------------------------------------------

# KV blocks read from the first step.BATCH_SUMMARY of the real runs.
KNOWN_KV_BLOCKS: dict[tuple[str, int], int] = {
    ("llama-2-7b", 1): 7463,
    ("llama-2-70b", 4): 31356,
    ("codellama-34b", 2): 26602,
}
GPU_MEMORY_UTILIZATION = 0.9
ACTIVATION_RESERVE_BYTES = 1.8e9  # fitted to the three known totals (1.5-2.0 GB)


def kv_blocks_total(spec: ModelSpec, tp: int, hbm_capacity_gb: float = 80.0) -> int:
    """GPU KV blocks of a deployment: the real total where known, else derived from memory."""
    known = KNOWN_KV_BLOCKS.get((spec.name, tp))
    if known is not None:
        return known
    free = (
        GPU_MEMORY_UTILIZATION * hbm_capacity_gb * 2**30
        - spec.weight_bytes_per_gpu(tp)
        - ACTIVATION_RESERVE_BYTES
    )
    blocks = int(free // (spec.kv_bytes_per_token(tp) * KV_BLOCK_TOKENS))
    if blocks <= 0:
        raise ValueError(f"{spec.name} does not fit on {tp} GPU(s)")
    return blocks


@dataclass(frozen=True)
class Deployment:
    model: str  # canonical name (data_prep.specs)
    tp: int
    hf_id: str
    # experiment-folder slug per workload (the real campaign's slugs are inconsistent)
    slugs: dict[str, str] = field(default_factory=dict)

    def slug(self, workload: str) -> str:
        return self.slugs.get(workload, self.model)


SEED_DEPLOYMENTS: dict[str, Deployment] = {
    "llama-2-7b": Deployment("llama-2-7b", 1, "meta-llama/Llama-2-7b-hf"),
    "llama-2-70b": Deployment(
        "llama-2-70b",
        4,
        "meta-llama/Llama-2-70b-hf",
        {"codegen": "llama-2-70b-hf", "reasoning": "llama-2-70b-hf"},
    ),
    "codellama-34b": Deployment("codellama-34b", 2, "codellama/CodeLlama-34b-Instruct-hf"),
    "mixtral-8x7b": Deployment(
        "mixtral-8x7b",
        2,
        "mistralai/Mixtral-8x7B-v0.1",
        {w: "mixtral-8x7b-v0-1" for w in WORKLOADS},
    ),
}

# -- experiments and presets -------------------------------------------------------------------

CAMPAIGN_START = _dt.datetime(2026, 3, 2, 9, 0, 0)
CLIENT_DRAIN_S = 30.0  # after the last stage the client waits this long, then aborts the rest
CLIENT_TIMEOUT_S = 600.0  # a request still unfinished this long after arrival is aborted


@dataclass(frozen=True)
class ExperimentSpec:
    """One synthetic run: a deployment, a workload (possibly time-scaled) and a vLLM config."""

    index: int
    model: str
    tp: int
    workload: Workload
    config: VllmConfig = DEFAULT_CONFIG
    variant: str = ""  # "" for the main campaign, else the sweep label

    @property
    def deployment(self) -> Deployment:
        return SEED_DEPLOYMENTS[self.model]

    @property
    def start_time(self) -> _dt.datetime:
        return CAMPAIGN_START + _dt.timedelta(minutes=37 * self.index, seconds=11 * self.index)

    @property
    def experiment_id(self) -> str:
        stamp = self.start_time.strftime("%Y%m%d-%H%M%S")
        return (
            f"{stamp}-{self.deployment.slug(self.workload.name)}-tp{self.tp}-{self.workload.name}"
        )


SWEEP_VARIANTS: dict[str, VllmConfig] = {
    "mns64": replace(DEFAULT_CONFIG, max_num_seqs=64),
    "mns256": replace(DEFAULT_CONFIG, max_num_seqs=256),
    "mbt1024": replace(DEFAULT_CONFIG, max_num_batched_tokens=1024),
    "mbt4096": replace(DEFAULT_CONFIG, max_num_batched_tokens=4096),
    "nochunk": replace(DEFAULT_CONFIG, chunked_prefill=False),
}

MODEL_ORDER = ("llama-2-7b", "llama-2-70b", "mixtral-8x7b", "codellama-34b")
WORKLOAD_ORDER = ("general", "codegen", "roleplay", "reasoning")
PRESETS = ("tiny", "small", "full", "sweep")


def _main_campaign(time_scale: float, start_index: int = 0) -> list[ExperimentSpec]:
    out = []
    for model in MODEL_ORDER:
        for workload in WORKLOAD_ORDER:
            dep = SEED_DEPLOYMENTS[model]
            wl = WORKLOADS[workload].scaled(time_scale)
            out.append(ExperimentSpec(start_index + len(out), model, dep.tp, wl))
    return out


def _sweep(time_scale: float, start_index: int) -> list[ExperimentSpec]:
    out = []
    for model in ("codellama-34b", "mixtral-8x7b"):
        for label, config in SWEEP_VARIANTS.items():
            dep = SEED_DEPLOYMENTS[model]
            wl = WORKLOADS["general"].scaled(time_scale)
            out.append(ExperimentSpec(start_index + len(out), model, dep.tp, wl, config, label))
    return out


def preset_experiments(preset: str) -> list[ExperimentSpec]:
    """The experiments of a preset.

    - ``tiny``: 2 models x general, 30 s of load (seconds to run; tests).
    - ``small``: all 16 experiments, stages at 1/40 of the real length (demo, < 1 min).
    - ``full``: the 16 experiments at their real durations plus the sweep at 0.7 length
      (the real campaign: 16 runs + sweeps).
    - ``sweep``: 2 models x {max_num_seqs 64/256, max_num_batched_tokens 1024/4096, no
      chunked prefill} on the general profile at 1/4 length.
    """
    if preset == "tiny":
        out = []
        for i, model in enumerate(("llama-2-70b", "codellama-34b")):
            dep = SEED_DEPLOYMENTS[model]
            wl = replace(WORKLOADS["general"], stages=(Stage(8, 15), Stage(20, 15)))
            out.append(ExperimentSpec(i, model, dep.tp, wl))
        return out
    if preset == "small":
        return _main_campaign(1 / 40)
    if preset == "full":
        main = _main_campaign(1.0)
        return main + _sweep(0.7, len(main))
    if preset == "sweep":
        return _sweep(0.25, 100)
    raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")
