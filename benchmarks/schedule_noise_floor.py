"""How well *any* predictor of the scheduler CPU time can do from the batch features.

    .venv/bin/python benchmarks/schedule_noise_floor.py runs/real/steps.parquet

Groups rows by (model, running-queue depth in bins of 8, prefill present) and scores the
best constant each group could predict — its MAPE-optimal 1/y-weighted median — on the
same rows. That is an optimistic, in-sample floor for MAPE and median APE: the traced
``step.duration_us`` is bimodal at large batches (a slow regime that persists over time
and is not visible in the batch), so no model of the batch alone gets below it by much.
"""

from __future__ import annotations

import argparse

import numpy as np

from data_prep.dataset import load_steps
from inference.predictive import mape_optimal_point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps")
    parser.add_argument("--bin", type=int, default=8, help="running-queue bin width")
    args = parser.parse_args()
    steps = load_steps(args.steps)
    keys = [
        steps["model"],
        steps["queue.running_depth"] // args.bin,
        steps["batch.num_prefill_reqs"] > 0,
    ]
    errors = []
    for _, group in steps.groupby(keys):
        y = group["schedule_us"].to_numpy(dtype=float)
        point = mape_optimal_point(y[:, None], winsor=0.0)[0]
        errors.append(np.abs(point - y) / y)
    ape = np.concatenate(errors) * 100
    print(f"groups: {len(errors)}, rows: {ape.size}")
    print(f"in-sample floor: MAPE {ape.mean():.1f}%, median APE {np.median(ape):.1f}%")


if __name__ == "__main__":
    main()
