"""Simulation-based calibration (SBC) of ``models.hierarchical.build_model``.

Draws parameter sets and datasets from the model's own prior (``pm.sample_prior_predictive``
on the design of a small real frame: 2 models × ``--rows`` rows of the ``--target``),
refits each simulated dataset the way ``steptime fit`` does (nutpie, chains started at the
posterior mode) and records the rank of the true value among the posterior draws for the
key parameters (``log_beta_population`` entries, ``sigma_step`` per model, ``nu``; for the
``schedule`` target also the slow regime's per-model threshold, jump, growth and share of
slow steps, and the switch width). Ranks of a calibrated inference are uniform; a χ² test
over ``--bins`` bins gives one p-value per parameter.

    .venv/bin/python benchmarks/sbc.py --sims 50 [--target schedule]

The observed data of ``build_model`` is a constant in the graph, so every simulation is
rebuilt and recompiled (numba caches the kernels; each compile takes a few seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_STEPS = ROOT / ".." / "shared" / "data" / "real" / "steps_h100_vllm0151.parquet"


KEY_PARAMETERS = {
    "cycle": ("log_beta_population", "sigma_step", "nu"),
    "schedule": (
        "log_beta_population",
        "sigma_step",
        "nu",
        "threshold",
        "jump",
        "growth",
        "p_max",
        "width",
    ),
}


def small_design(rows_per_model: int, seed: int, data: Path | None, target: str):
    from data_prep.dataset import load_steps, prepare_steps
    from inference.estimator import StepTimeModel

    if data is not None:
        steps = load_steps(data)
    elif SHARED_STEPS.is_file():
        steps = prepare_steps([SHARED_STEPS]).steps
    else:
        raise SystemExit(f"no data: pass --data steps.parquet ({SHARED_STEPS} is absent)")
    steps = steps[steps[f"{target}_us"].notna()]
    rng = np.random.default_rng(seed)
    models = sorted(steps["model"].unique())[:2]
    keep = np.concatenate(
        [
            rng.choice(
                np.flatnonzero((steps["model"] == m).to_numpy()), rows_per_model, replace=False
            )
            for m in models
        ]
    )
    steps = steps.iloc[np.sort(keep)].reset_index(drop=True)
    estimator = StepTimeModel(target=target)
    return estimator, estimator.design(steps)


def parameter_values(dataset, names) -> dict[str, np.ndarray]:
    """Flatten the named variables of a (chain, draw, ...) dataset into label → draws."""
    out = {}
    for name in names:
        array = dataset[name]
        extra = [d for d in array.dims if d not in ("chain", "draw")]
        stacked = array.stack(sample=("chain", "draw")).transpose("sample", *extra)
        values = stacked.values.reshape(stacked.shape[0], -1)
        labels = [name]
        if extra:
            coords = [array[d].values for d in extra]
            labels = [
                f"{name}[{', '.join(str(coords[i][j]) for i, j in enumerate(idx))}]"
                for idx in np.ndindex(*[len(c) for c in coords])
            ]
        for i, label in enumerate(labels):
            out[label] = values[:, i]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=50)
    parser.add_argument("--target", choices=tuple(KEY_PARAMETERS), default="cycle")
    parser.add_argument("--rows", type=int, default=150, help="rows per model")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--tune", type=int, default=200)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--thin", type=int, default=2, help="keep every n-th posterior draw")
    parser.add_argument("--bins", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="steps.parquet (default: ../shared real data)")
    parser.add_argument("--out", type=Path, help="write ranks and p-values as JSON here")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    import pymc as pm
    from scipy import stats

    from inference.estimator import sample_nuts
    from models.hierarchical import GroupCoords, build_model

    estimator, design = small_design(args.rows, args.seed, args.data, args.target)
    coords = GroupCoords.from_design(design)
    names = KEY_PARAMETERS[args.target]
    prior_model = build_model(design, estimator.priors, coords, forward=True)
    with prior_model:
        prior = pm.sample_prior_predictive(draws=args.sims, random_seed=args.seed)
    truths = parameter_values(prior.prior, names)
    simulated = prior.prior_predictive["log_y"].stack(sample=("chain", "draw"))
    simulated = simulated.transpose("sample", ...).values
    print(
        f"SBC ({args.target}): {args.sims} simulations of {len(design)} rows "
        f"({', '.join(coords.models)}), {args.chains}×{args.draws} draws each",
        flush=True,
    )

    ranks = {label: [] for label in truths}
    n_kept = None
    diverging, seconds = [], []
    for i in range(args.sims):
        started = time.perf_counter()
        y = np.exp(simulated[i])
        sim_design = dataclasses.replace(design, y=y)
        idata = sample_nuts(
            build_model(sim_design, estimator.priors, coords),
            draws=args.draws,
            tune=args.tune,
            chains=args.chains,
            seed=args.seed + 1 + i,
            progressbar=False,
        )
        posterior = parameter_values(idata.posterior, names)
        for label, truth in truths.items():
            draws = posterior[label][:: args.thin]
            n_kept = len(draws)
            ranks[label].append(int(np.sum(draws < truth[i])))
        diverging.append(int(idata.sample_stats["diverging"].values.sum()))
        seconds.append(time.perf_counter() - started)
        print(
            f"  sim {i + 1}/{args.sims}: {seconds[-1]:.1f} s, {diverging[-1]} divergences",
            file=sys.stderr,
            flush=True,
        )

    print(
        f"\nmean {np.mean(seconds):.1f} s per simulation (first {seconds[0]:.1f} s); "
        f"simulations with divergences: {sum(d > 0 for d in diverging)}/{args.sims}"
    )
    print(f"rank statistics over {n_kept + 1} possible ranks, χ² uniformity on {args.bins} bins")
    print(f"{'parameter':<45} {'mean rank/L':>11} {'χ² p':>8}  bin counts")
    results = {}
    for label, values in ranks.items():
        scaled = np.asarray(values) / n_kept
        counts = np.histogram(scaled, bins=args.bins, range=(0, 1 + 1e-9))[0]
        p = float(stats.chisquare(counts).pvalue)
        results[label] = {"ranks": values, "p_value": p, "counts": counts.tolist()}
        flag = "  <-- not uniform at 1%" if p < 0.01 else ""
        print(f"{label:<45} {scaled.mean():11.3f} {p:8.3f}  {counts.tolist()}{flag}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "n_kept_draws": n_kept,
                    "seconds": seconds,
                    "divergences": diverging,
                    "parameters": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
