"""Step dataset → design matrix of basis values, group indices and observation weights.

A ``cycle`` observation is the mean step time over ``cycle_gap_steps`` steps starting at
the sampled one; only the first of them was traced. The design carries what the
likelihood needs to marginalise over the untraced rest: the traced step's own bases, a
typical prefill step and a typical decode-only step of the neighbourhood, and the
local share of steps with a prefill chunk. ``schedule`` observations are single steps.

A cycle design may also carry a **host** part: the scheduler bases of each row and the
scheduler CPU times traced on it and on its neighbours, so that a step the scheduler
holds up (cycle = schedule + launch, not the GPU's forward pass) is priced as such.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from data_prep.schema import CYCLE_GAP, SCHEDULE_TARGET, TARGETS
from data_prep.specs import HardwareSpec, ModelSpec
from models.basis import BatchFeatures, evaluate_bases

NEIGHBOUR_WINDOW = 5  # sampled steps on each side that describe a gap's untraced steps
SHARE_PRIOR_STEPS = 2.0  # pseudo-steps of the run-level prefill share in the local share


@dataclass(frozen=True)
class HostDesign:
    """The scheduler side of cycle rows: its bases and the traced scheduler CPU times.

    ``schedule_us`` is the traced step's own ``step.duration_us``; ``neighbour_schedule_us``
    the mean over its sampled neighbours (same run, itself excluded), which stands for the
    gap's untraced steps the way the GPU templates do.
    """

    bases: np.ndarray  # (rows, host bases), µs at nominal scheduler costs
    basis_names: tuple[str, ...]
    schedule_us: np.ndarray
    neighbour_schedule_us: np.ndarray

    def as_schedule_design(self, design: Design) -> Design:
        """The rows as single-step ``schedule`` observations, to fit the host regression."""
        return replace(
            design,
            bases=self.bases,
            basis_names=self.basis_names,
            gap_steps=np.ones(len(design)),
            y=self.schedule_us,
            prefill_share=np.zeros(len(design)),
            prefill_bases=self.bases,
            decode_bases=self.bases,
            host=None,
        )


@dataclass(frozen=True)
class Design:
    """Everything the likelihood needs about a set of rows, positionally aligned."""

    bases: np.ndarray  # (rows, bases) of the observed step, µs at nominal efficiency
    basis_names: tuple[str, ...]
    model: np.ndarray  # model name per row
    architecture: np.ndarray  # "dense" | "moe" per row
    workload: np.ndarray  # workload name per row
    gap_steps: np.ndarray  # steps each observation averages over (1 for single steps)
    running_reqs: np.ndarray  # running-queue depth, which drives the scheduler's regime
    y: np.ndarray | None  # observed target (µs) or None
    prefill_share: np.ndarray  # P(an untraced step of the gap carries a prefill chunk)
    prefill_bases: np.ndarray  # (rows, bases) typical untraced prefill step
    decode_bases: np.ndarray  # (rows, bases) typical untraced decode-only step
    host: HostDesign | None = None  # scheduler part of a host-bound cycle design

    def __len__(self) -> int:
        return self.bases.shape[0]

    @property
    def untraced_steps(self) -> np.ndarray:
        return self.gap_steps - 1.0


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


def gap_templates(
    bases: np.ndarray, steps: pd.DataFrame, window: int = NEIGHBOUR_WINDOW
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prefill share, prefill template, decode template) for each row's untraced steps.

    Steps are sampled independently, so the untraced steps of a gap look like the
    sampled steps around it: of ``window`` sampled neighbours on each side (same run,
    the row itself excluded), the share with a prefill chunk — shrunk towards the run's
    share by a couple of pseudo-steps — and the mean bases of those with and without
    one. A neighbourhood without one kind falls back to the run's mean of that kind.
    Two templates, not one averaged step: a gap holds a whole prefill chunk or none,
    and averaging smears it into every gap, which biases prefill coefficients low.
    """
    n, k = bases.shape
    prefill_column = BatchFeatures.COLUMNS["prefill_tokens"]
    is_prefill = steps[prefill_column].to_numpy(dtype=float, na_value=0.0) > 0
    runs = steps["experiment_id"].to_numpy()
    order = np.lexsort((steps["step.id"].to_numpy(dtype=float), runs))
    kind = np.column_stack([is_prefill, ~is_prefill]).astype(float)[order]
    b = bases[order]
    values = np.column_stack([b * kind[:, :1], b * kind[:, 1:], kind])
    frame = pd.DataFrame(values)
    ordered_runs = runs[order]
    rolling = frame.groupby(ordered_runs).rolling(2 * window + 1, center=True, min_periods=1)
    sums = rolling.sum().reset_index(level=0, drop=True).sort_index().to_numpy() - values
    run_sums = frame.groupby(ordered_runs).transform("sum").to_numpy()
    pre_sum, dec_sum = sums[:, :k], sums[:, k : 2 * k]
    n_pre, n_dec = sums[:, 2 * k], sums[:, 2 * k + 1]
    run_pre, run_dec = run_sums[:, :k], run_sums[:, k : 2 * k]
    run_n_pre, run_n_dec = run_sums[:, 2 * k], run_sums[:, 2 * k + 1]
    run_share = run_n_pre / np.maximum(run_n_pre + run_n_dec, 1.0)
    share = (n_pre + SHARE_PRIOR_STEPS * run_share) / (n_pre + n_dec + SHARE_PRIOR_STEPS)
    run_pre_mean = np.where(
        run_n_pre[:, None] > 0, run_pre / np.maximum(run_n_pre, 1.0)[:, None], np.nan
    )
    run_dec_mean = np.where(
        run_n_dec[:, None] > 0, run_dec / np.maximum(run_n_dec, 1.0)[:, None], np.nan
    )
    run_pre_mean = np.where(np.isnan(run_pre_mean), run_dec_mean, run_pre_mean)
    run_dec_mean = np.where(np.isnan(run_dec_mean), run_pre_mean, run_dec_mean)
    prefill = np.where(n_pre[:, None] > 0, pre_sum / np.maximum(n_pre, 1.0)[:, None], run_pre_mean)
    decode = np.where(n_dec[:, None] > 0, dec_sum / np.maximum(n_dec, 1.0)[:, None], run_dec_mean)
    out_share, out_pre, out_dec = np.empty(n), np.empty_like(bases), np.empty_like(bases)
    out_share[order], out_pre[order], out_dec[order] = share, prefill, decode
    return out_share, out_pre, out_dec


def neighbour_mean(
    values: np.ndarray, steps: pd.DataFrame, window: int = NEIGHBOUR_WINDOW
) -> np.ndarray:
    """Mean of ``values`` over each row's ``window`` sampled neighbours on each side (same
    run, the row itself excluded); the row's own value where it has none."""
    runs = steps["experiment_id"].to_numpy()
    order = np.lexsort((steps["step.id"].to_numpy(dtype=float), runs))
    frame = pd.DataFrame({"v": values[order], "n": np.isfinite(values[order]).astype(float)})
    frame["v"] = frame["v"].where(frame["n"] > 0, 0.0)
    rolling = frame.groupby(runs[order]).rolling(2 * window + 1, center=True, min_periods=1)
    sums = rolling.sum().reset_index(level=0, drop=True).sort_index().to_numpy() - frame.to_numpy()
    mean = np.where(sums[:, 1] > 0, sums[:, 0] / np.maximum(sums[:, 1], 1.0), values[order])
    out = np.empty(len(values))
    out[order] = mean
    return out


def build_design(
    steps: pd.DataFrame,
    target: str,
    basis_names: tuple[str, ...],
    specs: dict[str, ModelSpec],
    hardware: HardwareSpec,
    rows: np.ndarray | None = None,
    host_basis_names: tuple[str, ...] | None = None,
) -> Design:
    """Design for ``steps[rows]`` (all rows by default), using the whole frame for gaps.

    ``host_basis_names`` (cycle only) adds the host part (see :class:`HostDesign`).
    """
    bases = step_bases(steps, basis_names, specs, hardware)
    y_column = TARGETS[target]
    if target == "cycle":
        gap = steps[CYCLE_GAP].to_numpy(dtype=float, na_value=1.0)
        share, prefill, decode = gap_templates(bases, steps)
    else:
        gap = np.ones(len(steps))
        share, prefill, decode = np.zeros(len(steps)), bases, bases
    if rows is None:
        rows = np.ones(len(steps), dtype=bool)
    y = steps[y_column].to_numpy(dtype=float, na_value=np.nan) if y_column in steps else None
    architecture = np.array(
        [specs[m].architecture for m in steps["model"].to_numpy()], dtype=object
    )
    host = None
    if host_basis_names is not None:
        if target != "cycle":
            raise ValueError("a host part belongs to cycle designs only")
        traced = steps[SCHEDULE_TARGET].to_numpy(dtype=float, na_value=np.nan)
        host = HostDesign(
            bases=step_bases(steps, tuple(host_basis_names), specs, hardware)[rows],
            basis_names=tuple(host_basis_names),
            schedule_us=traced[rows],
            neighbour_schedule_us=neighbour_mean(traced, steps)[rows],
        )
    return Design(
        host=host,
        bases=bases[rows],
        basis_names=tuple(basis_names),
        model=steps["model"].to_numpy(dtype=object)[rows],
        architecture=architecture[rows],
        workload=steps["workload"].to_numpy(dtype=object)[rows],
        gap_steps=np.maximum(gap[rows], 1.0),
        running_reqs=steps[BatchFeatures.COLUMNS["running_reqs"]].to_numpy(dtype=float)[rows],
        y=None if y is None else y[rows],
        prefill_share=share[rows],
        prefill_bases=prefill[rows],
        decode_bases=decode[rows],
    )
