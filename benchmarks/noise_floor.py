"""How well *any* predictor of the batch summary can do: an optimistic, in-sample floor.

    .venv/bin/python benchmarks/noise_floor.py runs/real/steps.parquet --target schedule
    .venv/bin/python benchmarks/noise_floor.py runs/synth/full_steps.parquet --target cycle \
        --by workload [--split runs/synth/full_split.json]
    .venv/bin/python benchmarks/noise_floor.py runs/real/steps.parquet --target schedule \
        --split runs/real/split_indices.json --gbm   # scikit-learn: pip install -e ".[bench]"

Groups rows into cells of near-identical batches and scores the best constant each cell
could predict — its MAPE-optimal 1/y-weighted median — on the very rows it was chosen
from. A lookup table that sees the answers bounds from below what a model of the same
features can reach on rows it did not fit. With ``--split`` the constants come from the
split's training rows and score its test rows (cells without training rows are counted,
not scored): the in-distribution accuracy of a flexible model of the batch summary.

- ``schedule`` cells: (model, running-queue depth in bins of ``--bin``, prefill present).
  The traced ``step.duration_us`` is bimodal at large batches (a slow regime that persists
  over time and is not visible in the batch).
- ``cycle`` cells: (model, decode tokens, prefill tokens, resident KV tokens, running and
  waiting queues, each in quarter- to third-octave bins, and the gap length up to 20).
  A cycle observation averages ``gap`` steps of which only the first was traced, so the
  untraced steps' batches and any host-bound stretch are unseen noise.

With ``--gbm`` the cells are replaced by gradient-boosted trees (scikit-learn's
``HistGradientBoostingRegressor``) on every batch feature a model may use
(:class:`models.basis.BatchFeatures`, the model's name and, for ``cycle``, the gap),
trained on the MAPE loss itself (absolute error weighted by 1/y): the flexible,
assumption-free predictor of the same inputs, scored on the fit rows and on the
score rows. ``--gbm-extra COLUMN ...`` adds trace columns no model uses (e.g.
``kv.usage_gpu_ratio``, ``batch.num_finished``, or ``step.ts_start_ns``, which no
simulator has), to see whether the floor comes from what the batch leaves out.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from data_prep.dataset import load_steps
from data_prep.splits import load_splits, select_rows
from inference.predictive import mape_optimal_point
from models.basis import BatchFeatures

GBM_SEED = 0


def log_bins(values: pd.Series, per_octave: int) -> np.ndarray:
    """Bin index of ``values`` on a log₂ scale, ``per_octave`` bins per doubling."""
    return np.floor(np.log2(values.to_numpy(dtype=float) + 1.0) * per_octave)


def cells(steps: pd.DataFrame, target: str, running_bin: int) -> list:
    """Group keys of near-identical batches for ``target`` (see the module docstring)."""
    if target == "schedule":
        return [
            steps["model"],
            steps["queue.running_depth"] // running_bin,
            steps["batch.num_prefill_reqs"] > 0,
        ]
    return [
        steps["model"],
        log_bins(steps["batch.decode_tokens"], 4),
        log_bins(steps["batch.prefill_tokens"], 3),
        log_bins(steps["kv_tokens"], 4),
        log_bins(steps["queue.running_depth"], 4),
        log_bins(steps["queue.waiting_depth"], 2),
        np.minimum(steps["cycle_gap_steps"].to_numpy(), 20),
    ]


def cell_ape(
    steps: pd.DataFrame, target: str, running_bin: int, fit: np.ndarray, score: np.ndarray
) -> tuple[pd.Series, int]:
    """Absolute percentage error (%) of each ``score`` row against the best constant of
    its cell over the ``fit`` rows (NaN where the cell has no ``fit`` row), and how many
    cells the ``fit`` rows fill."""
    y = steps[f"{target}_us"]
    cell = steps.groupby(cells(steps, target, running_bin)).ngroup()
    best = {
        key: mape_optimal_point(part.to_numpy(dtype=float)[:, None], winsor=0.0)[0]
        for key, part in y[fit].groupby(cell[fit])
    }
    point = cell[score].map(best)
    return (point - y[score]).abs() / y[score] * 100.0, len(best)


def gbm_ape(
    steps: pd.DataFrame,
    target: str,
    fit: np.ndarray,
    score: np.ndarray,
    extra_columns: tuple[str, ...] = (),
) -> tuple[pd.Series, pd.Series]:
    """Absolute percentage error (%) of gradient-boosted trees trained on the MAPE loss
    over the ``fit`` rows, on the ``fit`` rows themselves and on the ``score`` rows."""
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
    except ImportError:
        raise SystemExit(
            "--gbm needs scikit-learn: pip install -e '.[bench]' (or pip install scikit-learn)"
        ) from None
    columns = list(BatchFeatures.COLUMNS.values())
    if target == "cycle":
        columns.append("cycle_gap_steps")
    missing = [c for c in extra_columns if c not in steps.columns]
    if missing:
        raise SystemExit(f"--gbm-extra: no column {missing} in the step table")
    columns += [c for c in extra_columns if c not in columns]
    features = steps[columns].astype(float)
    features["model"] = steps["model"].astype("category").cat.codes
    y = steps[f"{target}_us"].to_numpy(dtype=float)
    trees = HistGradientBoostingRegressor(
        loss="absolute_error",
        max_iter=300,
        learning_rate=0.05,
        categorical_features=[features.columns.get_loc("model")],
        random_state=GBM_SEED,
    )
    trees.fit(features[fit], y[fit], sample_weight=1.0 / y[fit])
    out = []
    for rows in (fit, score):
        point = trees.predict(features[rows])
        out.append(pd.Series(np.abs(point - y[rows]) / y[rows] * 100.0, steps.index[rows]))
    return out[0], out[1]


def print_ape(label: str, ape: pd.Series, steps: pd.DataFrame, by: list[str] | None) -> None:
    print(f"{label}: MAPE {ape.mean():.1f}%, median APE {ape.median():.1f}%")
    if by:
        for group, part in ape.groupby([steps.loc[ape.index, c] for c in by]):
            name = ", ".join(f"{c}={g}" for c, g in zip(by, group, strict=True))
            print(f"  {name}: MAPE {part.mean():.1f}%, median APE {part.median():.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps")
    parser.add_argument("--target", choices=("cycle", "schedule"), default="schedule")
    parser.add_argument("--by", nargs="+", help="also break the floor down by these columns")
    parser.add_argument("--bin", type=int, default=8, help="running-queue bin width (schedule)")
    parser.add_argument("--split", help="split_indices.json: fit on its train rows, score test")
    parser.add_argument("--split-name", default="stratified")
    parser.add_argument("--gbm", action="store_true", help="gradient-boosted trees, not cells")
    parser.add_argument("--gbm-extra", nargs="+", default=(), help="more columns for --gbm")
    args = parser.parse_args()
    steps = load_steps(args.steps)
    has_target = steps[f"{args.target}_us"].notna().to_numpy()
    if args.split:
        splits = load_splits(args.split)
        fit = has_target & np.asarray(select_rows(steps, splits, args.split_name, "train"))
        score = has_target & np.asarray(select_rows(steps, splits, args.split_name, "test"))
        label = f"{args.split_name} test rows, cells fitted on its training rows"
    else:
        fit = score = has_target
        label = "in-sample"
    scored_label = f"{args.split_name} test rows"
    if args.gbm:
        fitted, scored = gbm_ape(steps, args.target, fit, score, tuple(args.gbm_extra))
        extra = f", plus {', '.join(args.gbm_extra)}" if args.gbm_extra else ""
        print(
            f"target: {args.target}, gradient-boosted trees on the MAPE loss{extra}, "
            f"{fit.sum()} fit rows"
        )
        print_ape("on its own fit rows", fitted, steps, args.by)
        if args.split:
            print_ape(scored_label, scored, steps, args.by)
        return
    ape, n_cells = cell_ape(steps, args.target, args.bin, fit, score)
    unscored = int(ape.isna().sum())
    ape = ape.dropna()
    print(f"target: {args.target}, cells: {n_cells}, rows scored: {ape.size}", end="")
    print(f" ({unscored} test rows in cells without training rows)" if args.split else "")
    print_ape(label, ape, steps, args.by)


if __name__ == "__main__":
    main()
