"""Step dataset → design matrix of basis values, group indices and observation weights.

A ``cycle`` observation is the mean step time over ``cycle_gap_steps`` steps starting at
the sampled one. Its expected value is the mean of the per-step bases over that gap:
the sampled step exactly, the untraced ones at the run's local level. ``schedule``
observations are single steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_prep.schema import CYCLE_GAP, TARGETS
from data_prep.specs import HardwareSpec, ModelSpec
from models.basis import BatchFeatures, evaluate_bases


@dataclass(frozen=True)
class Design:
    """Everything the likelihood needs about a set of rows, positionally aligned."""

    bases: np.ndarray  # (rows, bases) in µs at nominal efficiency
    basis_names: tuple[str, ...]
    model: np.ndarray  # model name per row
    architecture: np.ndarray  # "dense" | "moe" per row
    workload: np.ndarray  # workload name per row
    gap_steps: np.ndarray  # steps each observation averages over (1 for single steps)
    running_reqs: np.ndarray  # running-queue depth, which drives the scheduler's regime
    y: np.ndarray | None  # observed target (µs) or None

    def __len__(self) -> int:
        return self.bases.shape[0]


def step_bases(
    steps: pd.DataFrame,
    basis_names: tuple[str, ...],
    specs: dict[str, ModelSpec],
    hardware: HardwareSpec,
) -> np.ndarray:
    """Per-step basis matrix for rows of any mix of models and TP degrees."""
    out = np.empty((len(steps), len(basis_names)))
    for (model, tp), index in steps.groupby(["model", "tp"], sort=False).indices.items():
        if model not in specs:
            raise KeyError(f"no model spec for {model!r}; pass its config.json")
        x = BatchFeatures.from_frame(steps.iloc[index])
        out[index] = evaluate_bases(basis_names, x, specs[model], hardware, int(tp))
    return out


def gap_averaged(bases: np.ndarray, steps: pd.DataFrame, window: int = 3) -> np.ndarray:
    """Expected mean bases over each row's cycle gap.

    The sampled step counts exactly; the gap's other steps were not traced, so they
    take the local level of the run: the mean bases of up to ``window`` sampled
    neighbours on each side. A local mean, not an interpolation, because prefill
    tokens arrive in bursts that a straight line between two samples would smear.
    """
    gap = np.maximum(steps[CYCLE_GAP].to_numpy(dtype=float, na_value=1.0), 1.0)
    order = np.lexsort((steps["step.id"].to_numpy(dtype=float), steps["experiment_id"].to_numpy()))
    ordered = pd.DataFrame(bases[order])
    runs = steps["experiment_id"].to_numpy()[order]
    rolling = ordered.groupby(runs).rolling(2 * window + 1, center=True, min_periods=1)
    sums = rolling.sum().reset_index(level=0, drop=True).sort_index().to_numpy()
    counts = rolling.count().reset_index(level=0, drop=True).sort_index().to_numpy()
    neighbours = np.where(
        counts > 1, (sums - bases[order]) / np.maximum(counts - 1, 1), bases[order]
    )
    local = np.empty_like(bases)
    local[order] = neighbours
    g = gap[:, None]
    return (bases + (g - 1.0) * local) / g


def build_design(
    steps: pd.DataFrame,
    target: str,
    basis_names: tuple[str, ...],
    specs: dict[str, ModelSpec],
    hardware: HardwareSpec,
    rows: np.ndarray | None = None,
) -> Design:
    """Design for ``steps[rows]`` (all rows by default), using the whole frame for gaps."""
    bases = step_bases(steps, basis_names, specs, hardware)
    y_column = TARGETS[target]
    if target == "cycle":
        bases = gap_averaged(bases, steps)
        gap = steps[CYCLE_GAP].to_numpy(dtype=float, na_value=1.0)
    else:
        gap = np.ones(len(steps))
    if rows is None:
        rows = np.ones(len(steps), dtype=bool)
    y = steps[y_column].to_numpy(dtype=float, na_value=np.nan) if y_column in steps else None
    architecture = np.array(
        [specs[m].architecture for m in steps["model"].to_numpy()], dtype=object
    )
    return Design(
        bases=bases[rows],
        basis_names=tuple(basis_names),
        model=steps["model"].to_numpy(dtype=object)[rows],
        architecture=architecture[rows],
        workload=steps["workload"].to_numpy(dtype=object)[rows],
        gap_steps=np.maximum(gap[rows], 1.0),
        running_reqs=steps[BatchFeatures.COLUMNS["running_reqs"]].to_numpy(dtype=float)[rows],
        y=None if y is None else y[rows],
    )
