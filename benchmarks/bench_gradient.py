"""Time of one log density + gradient evaluation, the unit a NUTS fit's wall time is made of.

    .venv/bin/python benchmarks/bench_gradient.py --data steps.parquet --split split_indices.json \
        [--target cycle] [--host-bound] [--repeats 50]

Compiles the fit's model with the numba backend nutpie uses and prints milliseconds per
evaluation at the initial point. A fit's NUTS time ≈ (gradients per draw, which
``bench_fit.py`` prints) × draws × chains / cores × this.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from data_prep.dataset import load_steps
from data_prep.schema import TARGETS
from data_prep.splits import load_splits, select_rows
from inference.estimator import StepTimeModel
from models.hierarchical import GroupCoords, build_model
from models.priors import DEFAULT_PRIORS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--split-name", default="stratified")
    parser.add_argument("--target", default="cycle", choices=("cycle", "schedule"))
    parser.add_argument("--host-bound", action="store_true")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    steps = load_steps(args.data)
    rows = np.array(select_rows(steps, load_splits(args.split), args.split_name, "train"))
    rows &= steps[TARGETS[args.target]].notna().to_numpy()
    priors = DEFAULT_PRIORS[args.target]
    estimator = StepTimeModel(
        target=args.target, priors=priors.with_host() if args.host_bound else priors
    )
    design = estimator.design(steps, rows=rows)
    pm_model = build_model(design, estimator.priors, GroupCoords.from_design(design))
    started = time.perf_counter()
    function = pm_model.logp_dlogp_function(ravel_inputs=True, mode="NUMBA")
    function.set_extra_values({})
    point = np.concatenate([v.ravel() for v in pm_model.initial_point().values()])
    function(point)
    compiled = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.repeats):
        function(point)
    per_call = (time.perf_counter() - started) / args.repeats
    print(f"rows: {len(design)}  target: {args.target}  host-bound: {args.host_bound}")
    print(f"compile: {compiled:.1f} s  log density + gradient: {1e3 * per_call:.2f} ms")


if __name__ == "__main__":
    main()
