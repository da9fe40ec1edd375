"""How much of the step cycle the scheduler's CPU time takes, per workload and model.

    .venv/bin/python benchmarks/host_share.py runs/synth/full_steps.parquet

The cycle bases price the GPU's forward pass. ``Scheduler.schedule()`` overlaps it, so a
step is host-bound only when the scheduler outlasts the GPU; at large queues (the slow
regime) it comes close. This prints, per (workload, model), the median scheduler time, the
median cycle and the share of traced steps whose scheduler time is at least ``--threshold``
of their gap's mean cycle: where that share is large, steps are at or near the host bound
and a cycle fit needs ``--host-bound``. How many are truly host-bound only the synthetic
ground truth tells (``benchmarks/synth_truth_by_workload.py``): at the default 0.5 far
fewer than this share.
"""

from __future__ import annotations

import argparse

import numpy as np

from data_prep.dataset import load_steps
from data_prep.schema import TARGETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps")
    parser.add_argument("--threshold", type=float, default=0.5, help="scheduler share of the cycle")
    args = parser.parse_args()
    steps = load_steps(args.steps)
    schedule, cycle = steps[TARGETS["schedule"]], steps[TARGETS["cycle"]]
    steps = steps.assign(_share=(schedule / cycle).to_numpy(dtype=float))
    steps = steps[np.isfinite(steps["_share"])]
    header = f"{'workload':<12}{'model':<16}{'rows':>7}{'sched p50 µs':>14}{'cycle p50 µs':>14}"
    print(header + f"{'sched/cycle p50':>17}{'sched ≥ share':>15}")
    for (workload, model), group in steps.groupby(["workload", "model"]):
        near_bound = float(np.mean(group["_share"] >= args.threshold))
        print(
            f"{workload:<12}{model:<16}{len(group):>7}"
            f"{group[TARGETS['schedule']].median():>14.0f}{group[TARGETS['cycle']].median():>14.0f}"
            f"{group['_share'].median():>17.3f}{near_bound:>15.1%}"
        )


if __name__ == "__main__":
    main()
