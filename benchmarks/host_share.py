"""How much of the step cycle the scheduler's CPU time takes, per workload and model.

    .venv/bin/python benchmarks/host_share.py runs/synth/full_steps.parquet

The cycle bases price the GPU's forward pass. When ``Scheduler.schedule()`` itself runs
for a large part of the cycle (its slow regime at large queues), the step is host-bound
and no GPU basis describes it. This prints, per (workload, model), the median scheduler
time, the median cycle and the share of traced steps whose scheduler time is at least
half of their gap's mean cycle: groups where that share is large need a host-bound term
the GPU bases cannot supply, and a fit that never saw them cannot predict them.
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
    print(header + f"{'sched/cycle p50':>17}{'host-bound':>12}")
    for (workload, model), group in steps.groupby(["workload", "model"]):
        host_bound = float(np.mean(group["_share"] >= args.threshold))
        print(
            f"{workload:<12}{model:<16}{len(group):>7}"
            f"{group[TARGETS['schedule']].median():>14.0f}{group[TARGETS['cycle']].median():>14.0f}"
            f"{group['_share'].median():>17.3f}{host_bound:>12.1%}"
        )


if __name__ == "__main__":
    main()
