"""Wall time of a full NUTS fit, with its convergence, on a prepared step table.

    .venv/bin/python benchmarks/bench_fit.py --data steps.parquet --split split_indices.json \
        [--target cycle] [--chains 2] [--draws 1000] [--tune DRAWS] [--init laplace]
        [--target-accept 0.95] [--out FITDIR]

Prints rows fitted, chains × draws, compile+sampling wall time and the convergence line.
The goal from the project's issue is ≤ 10 minutes for the ~165K-step synthetic campaign
(≈100K training rows) on a 2-core machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from data_prep.dataset import load_steps
from data_prep.splits import load_splits, select_rows
from diagnostics.convergence import convergence_summary, format_convergence
from inference.estimator import StepTimeModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--split-name", default="stratified")
    parser.add_argument("--target", default="cycle", choices=("cycle", "schedule"))
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, help="warm-up draws (default: as many as --draws)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default="map", choices=("laplace", "map", "support_point"))
    parser.add_argument("--target-accept", type=float, default=0.95)
    parser.add_argument("--out", help="keep the fit here (default: a temporary folder)")
    args = parser.parse_args()

    steps = load_steps(args.data)
    rows = np.array(select_rows(steps, load_splits(args.split), args.split_name, "train"))
    model = StepTimeModel(target=args.target)
    tune = args.draws if args.tune is None else args.tune
    started = time.perf_counter()
    model.fit(
        steps,
        rows,
        draws=args.draws,
        tune=tune,
        chains=args.chains,
        seed=args.seed,
        progressbar=False,
        init=args.init,
        target_accept=args.target_accept,
    )
    wall = time.perf_counter() - started
    model.save(args.out or tempfile.mkdtemp(prefix="bench_fit_"))
    attrs = model.idata_.posterior.attrs
    print(
        f"rows fitted: {attrs['n_observations']}  target: {args.target}  "
        f"chains × draws: {args.chains} × {args.draws} (+{tune} tune)  init: {args.init}  "
        f"target accept: {args.target_accept}"
    )
    print(
        f"fit wall time: {wall:.1f} s (of which mode + curvature "
        f"{attrs.get('laplace_seconds', 0)} s; NUTS with its numba compile "
        f"{attrs['sampling_seconds'] - attrs.get('laplace_seconds', 0):.1f} s; rest = design)"
    )
    print(gradients_per_draw(model.idata_))
    print(format_convergence(convergence_summary(model.idata_)))


def gradients_per_draw(idata) -> str:
    """Mean leapfrog steps (log density gradients) per draw, in warm-up and sampling: with
    the time of one gradient this is where a fit's wall time goes."""
    phases = [("warm-up", "warmup_sample_stats"), ("sampling", "sample_stats")]
    parts = [
        f"{label} {float(idata[group]['n_steps'].mean()):.0f}"
        for label, group in phases
        if group in idata.groups() and "n_steps" in idata[group]
    ]
    return "gradients per draw: " + (", ".join(parts) or "not recorded by this sampler")


if __name__ == "__main__":
    main()
