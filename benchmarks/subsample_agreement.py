"""Does a fit on a seeded subset of the training rows agree with a fit on more of them?

    .venv/bin/python benchmarks/subsample_agreement.py --data steps.parquet \
        --split split_indices.json [--sizes 5000 10000 20000] [--chains 2] [--draws 500] \
        [--test-rows 20000]

For each size: fit wall time and convergence, then — on the same seeded subset of the
split's test rows — cycle MAPE and 90% coverage, and how far each per-model log β moved
from the largest fit's posterior, in units of the largest fit's posterior sd. When the
smaller fits predict the test rows as well and their coefficients sit within a posterior
sd or so of the largest, fitting every row buys nothing but time: this is the evidence
behind ``steptime fit --max-rows`` on large campaigns.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from data_prep.dataset import load_steps
from data_prep.schema import TARGETS
from data_prep.splits import load_splits, select_rows, subsample_rows
from diagnostics.convergence import convergence_summary, format_convergence
from diagnostics.metrics import interval_coverage, mape
from inference.estimator import StepTimeModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--split-name", default="stratified")
    parser.add_argument("--target", default="cycle", choices=("cycle", "schedule"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--test-rows", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    steps = load_steps(args.data)
    splits = load_splits(args.split)
    has_target = steps[TARGETS[args.target]].notna().to_numpy()
    train = np.asarray(select_rows(steps, splits, args.split_name, "train")) & has_target
    test = np.asarray(select_rows(steps, splits, args.split_name, "test")) & has_target
    test = subsample_rows(test, args.test_rows, args.seed + 1)
    y = steps.loc[test, TARGETS[args.target]].to_numpy(dtype=float)
    print(f"training rows available: {int(train.sum())}; scored test rows: {int(test.sum())}")

    fits = []
    for size in sorted(args.sizes):
        rows = subsample_rows(train, size, args.seed)
        model = StepTimeModel(target=args.target)
        started = time.perf_counter()
        model.fit(
            steps,
            rows,
            draws=args.draws,
            tune=args.draws,
            chains=args.chains,
            seed=args.seed,
            progressbar=False,
        )
        wall = time.perf_counter() - started
        predicted = model.predict(steps, test, n_draws=500, seed=args.seed)
        log_beta = model.idata_.posterior["log_beta"]
        fits.append(
            {
                "rows": int(rows.sum()),
                "wall": wall,
                "convergence": format_convergence(convergence_summary(model.idata_)),
                "mape": mape(y, predicted["point_us"]),
                "coverage_90": interval_coverage(y, predicted["q0.05"], predicted["q0.95"]),
                "mean": log_beta.mean(("chain", "draw")),
                "sd": log_beta.std(("chain", "draw")),
            }
        )
        print(f"fitted {fits[-1]['rows']} rows in {wall:.0f} s — {fits[-1]['convergence']}")

    reference = fits[-1]
    print(
        f"\n{'rows':>8} {'fit s':>7} {'MAPE %':>7} {'cov90':>6} "
        f"{'max |Δ log β| / sd':>19} {'median':>7}   (Δ against the {reference['rows']}-row fit)"
    )
    for fit in fits:
        shift = np.abs(fit["mean"] - reference["mean"]) / reference["sd"]
        print(
            f"{fit['rows']:>8} {fit['wall']:>7.0f} {fit['mape']:>7.2f} {fit['coverage_90']:>6.2f} "
            f"{float(shift.max()):>19.2f} {float(shift.median()):>7.2f}"
        )


if __name__ == "__main__":
    main()
