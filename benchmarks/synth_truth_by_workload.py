"""What the synthetic ground truth says about each workload: host-bound steps and KV proxy.

    .venv/bin/python benchmarks/synth_truth_by_workload.py runs/synth/full

Reads the ``ground_truth.parquet`` the twin writes beside each synthetic run (the traced,
i.e. sampled, steps only) and prints per (workload, model):

- **host-bound**: share of steps whose scheduler CPU time plus launch outlasts the GPU's
  busy time, so that the scheduler sets the cycle; and the mean cycle excess this causes
  over the GPU's busy time. A cycle model without a host term underpredicts by about that.
- **context / KV**: Σ context tokens the attention of the batch reads per request, and the
  ratio of that Σ to ``kv_tokens`` (resident KV blocks × 16), the proxy the ``kv_read``
  basis uses. A proxy ratio that differs between workloads shifts ``kv_read`` with them.
- **prefill attention**: per workload, the true Σ(new·context) pairs of the prefill chunks
  over the pairs the ``prefill_attention`` basis assumes (Σ ratio and row log-sd), and the
  same for the chunk-only count P²/(2·prefill requests) of basis sets ≤ 3.

Ground truth is what no fit may see; this script only explains fitted results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.specs import get_model_spec, load_hardware
from data_prep.synth.oracle import HOST_CYCLE_PAD_US, OUTPUT_PROC_PER_REQ_US, OUTPUT_PROC_US
from models.basis import BatchFeatures, prefill_attention_us


def load_ground_truth(campaign: Path) -> pd.DataFrame:
    files = sorted(campaign.glob("*/ground_truth.parquet"))
    if not files:
        raise SystemExit(f"{campaign}: no */ground_truth.parquet (run `steptime synth` first)")
    frames = []
    for path in files:
        truth = pd.read_parquet(path)
        frames.append(truth[truth["sampled"] & (truth["batch.scheduled_tokens"] > 0)])
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", type=Path, help="folder written by `steptime synth`")
    args = parser.parse_args()
    truth = load_ground_truth(args.campaign)
    requests = truth["batch.num_prefill_reqs"] + truth["batch.num_decode_reqs"]
    busy_gpu = truth["gpu_us"] + OUTPUT_PROC_US + OUTPUT_PROC_PER_REQ_US * requests
    truth = truth.assign(
        model=truth["experiment_id"].map(_model_of),
        workload=truth["experiment_id"].str.rsplit("-", n=1).str[-1],
        host_bound=truth["schedule_us"] + HOST_CYCLE_PAD_US > busy_gpu,
        host_excess=truth["busy_cycle_us"] / busy_gpu - 1.0,
        context_per_request=truth["true.context_tokens"] / requests.clip(lower=1),
        context_over_kv=truth["true.context_tokens"] / truth["kv_tokens"].clip(lower=1),
    )
    table = truth.groupby(["workload", "model"]).agg(
        steps=("host_bound", "size"),
        host_bound=("host_bound", "mean"),
        host_excess=("host_excess", "mean"),
        context_per_request=("context_per_request", "median"),
        context_over_kv=("context_over_kv", "median"),
        kv_tokens=("kv_tokens", "median"),
    )
    print(
        f"{'workload':<11}{'model':<15}{'steps':>7}{'host-bound':>12}{'cycle excess':>14}"
        f"{'context/req':>13}{'context/KV':>12}{'KV p50':>9}"
    )
    for (workload, model), row in table.iterrows():
        print(
            f"{workload:<11}{model:<15}{int(row.steps):>7}{row.host_bound:>12.1%}"
            f"{row.host_excess:>14.1%}{row.context_per_request:>13.0f}"
            f"{row.context_over_kv:>12.2f}{row.kv_tokens:>9.0f}"
        )
    print_prefill_attention(truth)


def print_prefill_attention(truth: pd.DataFrame) -> None:
    """How well the ``prefill_attention`` basis counts the attention pairs of prefill chunks."""
    # (recomputed requests after a preemption also attend in chunks, but are traced as
    # decode tokens; steps with only those are left out)
    chunks = truth[(truth["true.attn_pairs"] > 0) & (truth["batch.prefill_tokens"] > 0)]
    features = BatchFeatures.from_mapping({c: chunks[c].to_numpy() for c in chunks.columns})
    spec, hw = get_model_spec("llama-2-7b"), load_hardware()
    per_pair = 4.0 * spec.num_heads * spec.head_dim * spec.num_layers / hw.flops_per_us
    assumed = {
        "basis": prefill_attention_us(features, spec, hw, 1) / per_pair,
        "chunk only": features.prefill_tokens**2 / (2.0 * np.maximum(features.prefill_reqs, 1)),
    }
    true = chunks["true.attn_pairs"].to_numpy()
    print(
        f"\n{'workload':<11}{'prefill steps':>14}"
        + "".join(f"{name + ' Σ true/assumed':>28}{'log-sd':>8}" for name in assumed)
    )
    for workload, index in chunks.groupby("workload").indices.items():
        cells = "".join(
            f"{true[index].sum() / pairs[index].sum():>28.2f}"
            f"{np.log(true[index] / pairs[index]).std():>8.2f}"
            for pairs in assumed.values()
        )
        print(f"{workload:<11}{index.size:>14}{cells}")


def _model_of(experiment_id: str) -> str:
    """The model in a synthetic run's id (``llama-2-70b`` before its prefix ``llama-2-7b``)."""
    for name in ("codellama-34b", "llama-2-70b", "llama-2-7b", "mixtral-8x7b"):
        if name in experiment_id:
            return name
    raise ValueError(f"no known model in experiment id {experiment_id!r}")


if __name__ == "__main__":
    main()
