"""Replay a workload through the scheduler twin with step times from the sampler.

The twin (:func:`data_prep.synth.twin.simulate`) runs twice with the same seed — the same
arrivals and prompts: once with its own latency oracle (the ground truth) and once with
``step_time_fn`` = one :class:`~inference.sampler.RunSampler` (one posterior draw for the
run, per-step noise on top). With ``runs`` > 1 that is repeated for seeds seed, seed + 1,
… and the requests of all runs are pooled: a run's mean E2E moves by several percent
with its one or two stalls (every in-flight request waits through each), on both sides.
Request latencies (TTFT, ITL, E2E) of both are summarised side by side; for the seed
models the real client medians of ``../shared/data/real/experiments.csv`` are added when
that file is present.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.specs import canonical_model_name
from inference.sampler import StepTimeSampler

METRICS = ("ttft_ms", "itl_ms", "e2e_ms")
STATS = ("mean", "p50", "p90")
REAL_EXPERIMENTS = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "experiments.csv"
)
REAL_COLUMNS = {
    "ttft_ms": "client_ttft_median_ms",
    "itl_ms": "client_tpot_median_ms",
    "e2e_ms": "client_e2e_median_ms",
}


@dataclass
class ReplayResult:
    model: str
    tp: int
    workload: str
    time_scale: float
    seed: int
    truth: dict[str, dict[str, float]]  # metric -> stat -> value (ms)
    replay: dict[str, dict[str, float]]
    n_requests: dict[str, int]  # finished requests in truth / replay
    n_steps: dict[str, int]
    draws: list[int]  # posterior draw of each run (-1: central parameters)
    real: dict[str, float] = field(default_factory=dict)  # metric -> real client median
    seconds: float = 0.0

    def ratio(self, metric: str = "e2e_ms", stat: str = "mean") -> float:
        """Replay over truth."""
        return self.replay[metric][stat] / self.truth[metric][stat]

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "tp": self.tp,
            "workload": self.workload,
            "time_scale": self.time_scale,
            "seed": self.seed,
            "truth": self.truth,
            "replay": self.replay,
            "ratio": {m: {s: self.ratio(m, s) for s in STATS} for m in METRICS},
            "n_requests": self.n_requests,
            "n_steps": self.n_steps,
            "draws": self.draws,
            "real_client_median": self.real,
            "seconds": round(self.seconds, 2),
        }


def latency_stats(requests) -> dict[str, dict[str, float]]:
    """Mean, median and p90 (ms) of TTFT, ITL and E2E over finished requests."""
    done = requests[requests["status"] == "finished"]
    out = {}
    for metric in METRICS:
        values = done[metric].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            out[metric] = dict.fromkeys(STATS, math.nan)
            continue
        out[metric] = {
            "mean": float(values.mean()),
            "p50": float(np.median(values)),
            "p90": float(np.quantile(values, 0.9)),
        }
    return out


def real_client_medians(
    model: str, workload: str, path: str | Path | None = None
) -> dict[str, float]:
    """The real run's client medians (ms) for a seed model and workload, if recorded."""
    path = Path(path) if path is not None else REAL_EXPERIMENTS
    if not path.is_file():
        return {}
    wanted = canonical_model_name(model)
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if canonical_model_name(row.get("model", "")) != wanted:
                continue
            if row.get("workload") != workload:
                continue
            out = {}
            for metric, column in REAL_COLUMNS.items():
                try:
                    out[metric] = float(row[column])
                except (KeyError, TypeError, ValueError):
                    continue
            return out
    return {}


def replay(
    sampler: StepTimeSampler,
    model: str,
    tp: int,
    workload: str,
    *,
    seed: int = 0,
    time_scale: float = 1 / 40,
    config=None,
    parameter_uncertainty: bool = True,
    step_noise: bool = True,
    real_experiments: str | Path | None = None,
    runs: int = 1,
) -> ReplayResult:
    """Twin ground truth versus the twin driven by the sampler, for one deployment.

    ``time_scale`` shortens the workload's load stages (1/40 is the ``small`` synthetic
    preset). The sampler predicts the workload's effect when the fit saw the workload.
    """
    from data_prep.synth.twin import simulate
    from data_prep.synth.workloads import DEFAULT_CONFIG, WORKLOADS

    if sampler.target != "cycle":
        raise ValueError(
            f"replay needs a cycle-time artifact (the twin advances its clock by the step "
            f"cycle time); this one predicts {sampler.target!r}"
        )
    if workload not in WORKLOADS:
        raise KeyError(f"unknown workload {workload!r}; choose from {sorted(WORKLOADS)}")
    config = config or DEFAULT_CONFIG
    profile = WORKLOADS[workload].scaled(time_scale)
    started = time.perf_counter()
    truths, predictions, draws = [], [], []
    for run_seed in range(seed, seed + runs):
        truths.append(simulate(model, tp, profile, config, seed=run_seed))
        run = sampler.run_draw(
            np.random.default_rng([run_seed, 7]),
            model=model,
            tp=tp,
            workload=workload,
            parameter_uncertainty=parameter_uncertainty,
            step_noise=step_noise,
        )
        predictions.append(
            simulate(model, tp, profile, config, seed=run_seed, step_time_fn=run.step_time_fn)
        )
        draws.append(run.draw)
    truth_requests = pd.concat([r.requests for r in truths], ignore_index=True)
    replay_requests = pd.concat([r.requests for r in predictions], ignore_index=True)
    count = lambda r: int((r["status"] == "finished").sum())  # noqa: E731
    return ReplayResult(
        model=canonical_model_name(model),
        tp=int(tp),
        workload=workload,
        time_scale=float(time_scale),
        seed=int(seed),
        truth=latency_stats(truth_requests),
        replay=latency_stats(replay_requests),
        n_requests={"truth": count(truth_requests), "replay": count(replay_requests)},
        n_steps={
            "truth": sum(len(r.steps) for r in truths),
            "replay": sum(len(r.steps) for r in predictions),
        },
        draws=draws,
        real=real_client_medians(model, workload, real_experiments),
        seconds=time.perf_counter() - started,
    )


def _runs_label(result: ReplayResult) -> str:
    if len(result.draws) == 1:
        return f"seed {result.seed}, posterior draw {result.draws[0]}"
    last = result.seed + len(result.draws) - 1
    return f"{len(result.draws)} runs pooled, seeds {result.seed}–{last}"


def format_replay(result: ReplayResult) -> str:
    """A table of truth, replay and their ratio per metric."""
    lines = [
        f"{result.model} tp{result.tp} {result.workload} (time scale {result.time_scale:g}, "
        f"{_runs_label(result)}): "
        f"{result.n_requests['truth']} / {result.n_requests['replay']} finished requests, "
        f"{result.n_steps['truth']} / {result.n_steps['replay']} steps (truth / replay)",
        f"  {'metric':<8}{'stat':<6}{'twin truth':>12}{'replay':>12}{'ratio':>8}",
    ]
    for metric in METRICS:
        for stat in STATS:
            truth, rep = result.truth[metric][stat], result.replay[metric][stat]
            ratio = result.ratio(metric, stat)
            lines.append(f"  {metric:<8}{stat:<6}{truth:>12.2f}{rep:>12.2f}{ratio:>8.3f}")
    if result.real:
        shown = ", ".join(f"{m} {v:g}" for m, v in result.real.items())
        lines.append(
            f"  real client medians (full-length run, not time-scaled): {shown} ms — client "
            "TPOT is reported against itl_ms; it is about half the per-token step time"
        )
    return "\n".join(lines)
