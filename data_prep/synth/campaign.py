"""Run a preset of synthetic experiments and write them as real-format experiment folders.

Each folder ``<YYYYMMDD>-<HHMMSS>-<model-slug>-tp<N>-<workload>/`` holds ``traces.json``
(OTLP/JSON lines, steps sampled independently at 10%), ``exp-config.yaml``, and - for tests
and checks only - ``ground_truth.parquet`` (every step with its true schedule/GPU/cycle times
and a ``sampled`` flag) and ``ground_truth_requests.parquet`` (true TTFT/ITL/E2E).
Seeds: experiment ``i`` of run seed ``s`` uses ``SeedSequence(s, spawn_key=(i,))``, so an
experiment's output does not depend on which others run or in which order.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from data_prep.synth.workloads import ExperimentSpec, preset_experiments

SAMPLE_RATE = 0.1
CALIBRATION_TAIL = 0.2  # the real duration samples are the last 20% of each run's sampled steps


@dataclass
class ExperimentSummary:
    experiment_id: str
    model: str
    tp: int
    workload: str
    variant: str
    steps: int
    sampled_steps: int
    requests_ok: int
    requests_failed: int
    preemptions: int
    wall_s: float
    schedule_q: tuple[float, float, float]  # p10/p50/p90 of the last 20% of sampled steps
    cycle_median_us: float  # over all steps
    itl_median_ms: float  # per-token time of finished requests (median over requests)
    extra: dict = field(default_factory=dict)


def experiment_seed(seed: int, spec: ExperimentSpec) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(spec.index,))


def _summarise(spec, result, sampled, wall_s) -> ExperimentSummary:
    steps = result.steps
    idx = np.flatnonzero(sampled)
    tail = idx[int(len(idx) * (1 - CALIBRATION_TAIL)) :]
    sched = steps["schedule_us"].to_numpy()[tail]
    q = tuple(float(x) for x in np.percentile(sched, [10, 50, 90])) if len(tail) else (np.nan,) * 3
    req = result.requests
    return ExperimentSummary(
        experiment_id=spec.experiment_id,
        model=spec.model,
        tp=spec.tp,
        workload=spec.workload.name,
        variant=spec.variant,
        steps=len(steps),
        sampled_steps=int(sampled.sum()),
        requests_ok=int((req["status"] == "finished").sum()),
        requests_failed=int((req["status"] != "finished").sum()),
        preemptions=int(steps["batch.num_preempted"].sum()),
        wall_s=wall_s,
        schedule_q=q,
        cycle_median_us=float(np.median(steps["cycle_us"])) if len(steps) else np.nan,
        itl_median_ms=float(req["itl_ms"].median()),
    )


def exp_config(spec: ExperimentSpec) -> dict:
    c = spec.config
    return {
        "model": spec.deployment.hf_id,
        "tensor_parallelism": spec.tp,
        "max_model_len": c.max_model_len,
        "max_num_batched_tokens": c.max_num_batched_tokens,
        "max_num_seqs": c.max_num_seqs,
        "app": "inference-perf",
        "enable_chunked_prefill": c.chunked_prefill,
        "enable_prefix_caching": c.prefix_caching,
        "workload": spec.workload.name,
        "stages": [
            {"rate_rps": s.rate_rps, "duration_s": s.duration_s} for s in spec.workload.stages
        ],
        "sweep_variant": spec.variant or None,
        "synthetic": True,
    }


def run_experiment(
    spec: ExperimentSpec, seed: int, out_dir: Path | None = None
) -> ExperimentSummary:
    """Simulate one experiment; write its folder under ``out_dir`` when given."""
    from data_prep.synth.otlp_writer import write_traces
    from data_prep.synth.twin import simulate

    t0 = time.perf_counter()
    ss_twin, ss_sample = experiment_seed(seed, spec).spawn(2)
    result = simulate(spec.model, spec.tp, spec.workload, spec.config, seed=ss_twin)
    sampled = np.random.default_rng(ss_sample).random(len(result.steps)) < SAMPLE_RATE
    if out_dir is not None:
        folder = Path(out_dir) / spec.experiment_id
        folder.mkdir(parents=True, exist_ok=True)
        epoch_offset = calendar.timegm(spec.start_time.timetuple()) * 10**9 - int(
            result.steps["step.ts_start_ns"].iloc[0] if len(result.steps) else 0
        )
        epoch_offset -= epoch_offset % 10**9
        write_traces(result, sampled, spec.experiment_id, epoch_offset, folder / "traces.json")
        (folder / "exp-config.yaml").write_text(yaml.safe_dump(exp_config(spec), sort_keys=False))
        gt = result.steps.copy()
        gt["sampled"] = sampled
        gt.insert(0, "experiment_id", spec.experiment_id)
        gt.to_parquet(folder / "ground_truth.parquet", index=False)
        req = result.requests.copy()
        req.insert(0, "experiment_id", spec.experiment_id)
        req.to_parquet(folder / "ground_truth_requests.parquet", index=False)
    return _summarise(spec, result, sampled, time.perf_counter() - t0)


def _run_one(args) -> ExperimentSummary:
    spec, seed, out_dir = args
    return run_experiment(spec, seed, out_dir)


def run_campaign(
    preset: str,
    seed: int = 0,
    out_dir: Path | None = None,
    workers: int = 2,
    progress: bool = True,
) -> list[ExperimentSummary]:
    """Run every experiment of ``preset`` (in ``workers`` processes); summaries in preset order."""
    specs = preset_experiments(preset)
    # longest first keeps the two workers busy until the end
    order = sorted(
        specs, key=lambda s: -s.workload.duration_s * sum(st.rate_rps for st in s.workload.stages)
    )
    jobs = [(s, seed, out_dir) for s in order]
    summaries: list[ExperimentSummary] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"synth {preset}", unit="exp")
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            for summary in pool.imap_unordered(_run_one, jobs):
                summaries.append(summary)
                if bar is not None:
                    bar.set_postfix(sampled=sum(s.sampled_steps for s in summaries))
                    bar.update(1)
    else:
        for job in jobs:
            summaries.append(_run_one(job))
            if bar is not None:
                bar.set_postfix(sampled=sum(s.sampled_steps for s in summaries))
                bar.update(1)
    if bar is not None:
        bar.close()
    rank = {s.experiment_id: i for i, s in enumerate(specs)}
    summaries.sort(key=lambda s: rank[s.experiment_id])
    return summaries
